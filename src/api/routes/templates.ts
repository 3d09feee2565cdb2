import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import { startNdjson } from '../ndjson.js';
import { ListTemplatesResponse, TemplateParams } from '../../schemas/index.js';
import type { TemplateInfo } from '../../templates/types.js';
import { isCapsuleError } from '../../errors/index.js';
import { z } from 'zod';

export function toApiTemplate(t: TemplateInfo) {
  return {
    name: t.name,
    description: t.description,
    status: t.status,
    ...(t.sizeBytes !== undefined ? { sizeBytes: t.sizeBytes } : {}),
    ...(t.builtAt !== undefined ? { builtAt: new Date(t.builtAt).toISOString() } : {}),
    ...(t.error !== undefined ? { error: t.error } : {}),
  };
}

export function templateRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'GET',
    url: '/v1/templates',
    summary: 'List templates and whether they are built',
    tag: 'templates',
    responses: { 200: { description: 'Templates', schema: ListTemplatesResponse } },
    handler: async ({ ctx }) => ({ templates: s.templates.list(ctx).map(toApiTemplate) }),
  });

  t.add({
    method: 'POST',
    url: '/v1/templates/:name/build',
    summary: 'Build (or rebuild with force=true) a template; streams NDJSON progress, then done or error',
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
        out.write({ type: 'done', template: toApiTemplate(done) });
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
