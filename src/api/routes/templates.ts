import type { Readable } from 'node:stream';
import { z } from 'zod';
import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import { startNdjson, type NdjsonWriter } from '../ndjson.js';
import {
  BlobParams,
  BuildEvent,
  BuildInfo,
  BuildParams,
  BuildTemplateRequest,
  ListTemplatesResponse,
  TemplateDetails,
  TemplateInfo,
  TemplateParams,
} from '../../schemas/index.js';
import type { TemplateSummary } from '../../templates/catalog.js';
import { InvalidArgumentError, isCapsuleError, NotFoundError } from '../../errors/index.js';

export function toApiTemplate(t: TemplateSummary): z.infer<typeof TemplateInfo> {
  return {
    name: t.name,
    description: t.description,
    status: t.status,
    builtIn: t.builtIn,
    ...(t.owner !== undefined ? { owner: t.owner } : {}),
    ...(t.sizeBytes !== undefined ? { sizeBytes: t.sizeBytes } : {}),
    ...(t.builtAt !== undefined ? { builtAt: new Date(t.builtAt).toISOString() } : {}),
    ...(t.error !== undefined ? { error: t.error } : {}),
    ...(t.buildId !== undefined ? { buildId: t.buildId } : {}),
  };
}

/** Follow a build as NDJSON until it ends; a client that leaves stops following, never the build. */
async function streamBuild(s: Services, ctx: Parameters<Services['templates']['followBuild']>[0], id: string, reply: Parameters<typeof startNdjson>[0]): Promise<void> {
  let out: NdjsonWriter | undefined;
  const f = s.templates.followBuild(ctx, id, (ev) => void (out ??= startNdjson(reply)).write(ev));
  out ??= startNdjson(reply);
  out.onClose(() => f.stop());
  await f.done;
  out.end();
}

export function templateRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'GET',
    url: '/v1/templates',
    summary: 'List templates: the built-in ones and yours, with their build state',
    tag: 'templates',
    responses: { 200: { description: 'Templates', schema: ListTemplatesResponse } },
    handler: async ({ ctx }) => ({ templates: s.templates.list(ctx).map(toApiTemplate) }),
  });

  t.add({
    method: 'POST',
    url: '/v1/templates',
    summary: 'Build a template from its definition, or import an uploaded OCI image archive (a job: answers at once; follow=true streams its progress and output as NDJSON)',
    tag: 'templates',
    body: BuildTemplateRequest,
    query: z.object({ follow: z.enum(['true', 'false']).optional().describe('Stream BuildEvent lines until the build ends') }),
    responses: {
      202: { description: 'The build started (or an identical running one was joined)', schema: BuildInfo },
      200: { description: 'With follow=true: BuildEvent per line', contentType: 'application/x-ndjson', schema: z.array(BuildEvent) },
    },
    handler: async ({ body, query, ctx, reply }) => {
      const job = 'image' in body ? s.templates.importImage(ctx, body.name, body.image) : s.templates.define(ctx, body.name, body.definition);
      if (query.follow !== 'true') return reply.code(202).send(job.info());
      await streamBuild(s, ctx, job.id, reply);
      return reply;
    },
  });

  t.add({
    method: 'GET',
    url: '/v1/builds/:buildId',
    summary: 'State of a build: step, phase, and why it failed',
    tag: 'templates',
    params: BuildParams,
    responses: { 200: { description: 'The build', schema: BuildInfo } },
    handler: async ({ params, ctx }) => s.templates.buildInfo(ctx, params.buildId),
  });

  t.add({
    method: 'GET',
    url: '/v1/builds/:buildId/events',
    summary: "A build's progress and output as NDJSON: what was kept so far, then live until it ends",
    tag: 'templates',
    params: BuildParams,
    responses: { 200: { description: 'BuildEvent per line', contentType: 'application/x-ndjson', schema: z.array(BuildEvent) } },
    handler: async ({ params, ctx, reply }) => {
      s.templates.buildInfo(ctx, params.buildId); // a 404 before the stream starts
      await streamBuild(s, ctx, params.buildId, reply);
      return reply;
    },
  });

  t.add({
    method: 'GET',
    url: '/v1/blobs/:digest',
    summary: 'Whether you uploaded the archive with this digest (404 if not)',
    tag: 'templates',
    params: BlobParams,
    responses: { 200: { description: 'It is there', schema: z.object({ digest: z.string() }) } },
    handler: async ({ params, ctx }) => {
      if (!s.templates.hasBlob(ctx, params.digest)) throw new NotFoundError(`archive ${params.digest} was not uploaded`, { digest: params.digest });
      return { digest: params.digest };
    },
  });

  t.add({
    method: 'PUT',
    url: '/v1/blobs/:digest',
    summary: 'Upload a tar archive for copy steps or an image to import (raw body; refused unless its sha256 is the digest)',
    tag: 'templates',
    params: BlobParams,
    body: 'binary',
    responses: { 201: { description: 'Stored', schema: z.object({ digest: z.string(), size: z.number() }) } },
    handler: async ({ params, ctx, req, reply }) => {
      const body = req.body as Readable | undefined;
      if (!body || typeof (body as Readable).pipe !== 'function') throw new InvalidArgumentError('send the archive as the raw request body (Content-Type: application/octet-stream)');
      try {
        const size = await s.templates.putBlob(ctx, params.digest, body);
        return reply.code(201).send({ digest: params.digest, size });
      } catch (err) {
        if (!body.readableEnded) {
          reply.header('connection', 'close');
          body.resume();
        }
        throw err;
      }
    },
  });

  t.add({
    method: 'GET',
    url: '/v1/templates/:name',
    summary: 'A template in detail: its layers (lowest first), config and definition',
    tag: 'templates',
    params: TemplateParams,
    responses: { 200: { description: 'The template', schema: TemplateDetails } },
    handler: async ({ params, ctx }) => {
      const d = s.templates.details(ctx, params.name);
      return { ...toApiTemplate(d), layers: d.layers.map((l) => ({ ...l, kind: l.kind as 'base' })), ...(d.config ? { config: d.config } : {}), ...(d.definition ? { definition: d.definition } : {}) };
    },
  });

  t.add({
    method: 'DELETE',
    url: '/v1/templates/:name',
    summary: 'Remove one of your templates (409 while sandboxes use it); layers nothing else uses are deleted',
    tag: 'templates',
    params: TemplateParams,
    responses: { 204: { description: 'Removed' } },
    handler: async ({ params, ctx }) => {
      await s.templates.remove(ctx, params.name);
    },
  });

  t.add({
    method: 'POST',
    url: '/v1/templates/:name/build',
    summary: 'Build (or rebuild with force=true) a built-in template; streams NDJSON progress, then done or error',
    tag: 'templates',
    params: TemplateParams,
    query: z.object({ force: z.enum(['true', 'false']).optional() }),
    responses: { 200: { description: 'progress / done / error events', contentType: 'application/x-ndjson' } },
    handler: async ({ params, query, reply, req, ctx }) => {
      const force = query.force === 'true';
      // An unknown name or a forbidden force is an ordinary 404/403, before the stream starts.
      s.templates.checkBuild(ctx, params.name, { force });
      const out = startNdjson(reply);
      try {
        const done = await s.templates.build(ctx, params.name, {
          force,
          onProgress: (p) => out.write({ type: 'progress', ...p }),
        });
        out.write({ type: 'done', template: toApiTemplate({ ...done, builtIn: true }) });
      } catch (err) {
        req.log.error({ err }, 'template build failed');
        out.write({
          type: 'error',
          error: isCapsuleError(err) ? { code: err.code, message: err.message } : { code: 'internal', message: String(err) },
        });
      }
      out.end();
      return reply;
    },
  });
}
