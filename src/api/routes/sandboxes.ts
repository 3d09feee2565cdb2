import { z } from 'zod';
import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import type { SandboxRecord } from '../../sandboxes/store.js';
import {
  CreateSandboxRequest,
  ListSandboxesQuery,
  ListSandboxesResponse,
  Sandbox,
  SandboxParams,
  SetTimeoutRequest,
} from '../../schemas/index.js';
import { lifecycleRoutes } from './lifecycle.js';
import { InvalidArgumentError } from '../../errors/index.js';
import { isolationOfRuntime } from '../../runtime/isolation.js';

/** The API's view of a sandbox record (also used by the MCP view). */
export function toApiSandbox(r: SandboxRecord): Sandbox {
  return {
    id: r.id,
    template: r.template,
    state: r.state,
    createdAt: new Date(r.createdAt).toISOString(),
    expiresAt: new Date(r.expiresAt).toISOString(),
    metadata: r.metadata,
    resources: r.resources,
    ...(r.endedAt !== null ? { endedAt: new Date(r.endedAt).toISOString() } : {}),
    ...(r.endReason !== null ? { endReason: r.endReason } : {}),
    isolation: isolationOfRuntime(r.runtime),
    lifecycle: {
      onTimeout: r.lifecycle.onTimeout,
      autoResume: r.lifecycle.autoResume,
      ...(r.lifecycle.idleMs !== null ? { idleMs: r.lifecycle.idleMs } : {}),
      deleteAfterMs: r.lifecycle.deleteAfterMs,
    },
    ...(r.snapshot !== null ? { snapshot: r.snapshot } : {}),
    ...(r.volumes.length > 0 ? { volumes: r.volumes.map((v) => ({ name: v.name, path: v.path, readOnly: v.readOnly })) } : {}),
    ...((r.state === 'paused' || r.state === 'stopped' || r.state === 'hibernated') && r.remainingMs !== null ? { timeoutRemainingMs: r.remainingMs } : {}),
  };
}

export function sandboxRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'POST',
    url: '/v1/sandboxes',
    summary: 'Create a sandbox',
    tag: 'sandboxes',
    body: CreateSandboxRequest,
    responses: { 201: { description: 'The running sandbox', schema: Sandbox } },
    handler: async ({ body, reply, ctx }) => {
      const ac = new AbortController();
      // A client that gives up on a create should not leave a half-made sandbox behind.
      reply.raw.once('close', () => {
        if (!reply.raw.writableFinished) ac.abort(new Error('the client closed the connection'));
      });
      return toApiSandbox(await s.sandboxes.create(ctx, { ...body, signal: ac.signal }));
    },
  });

  t.add({
    method: 'GET',
    url: '/v1/sandboxes',
    summary: 'List sandboxes (live ones by default); filter with state and metadata.<key>=<value>',
    tag: 'sandboxes',
    query: ListSandboxesQuery,
    responses: { 200: { description: 'Matching sandboxes', schema: ListSandboxesResponse } },
    handler: async ({ query, ctx }) => {
      const metadata: Record<string, string> = {};
      for (const [k, v] of Object.entries(query)) {
        if (k === 'state') continue;
        if (!k.startsWith('metadata.')) throw new InvalidArgumentError(`unknown query parameter ${k}`);
        if (typeof v !== 'string') throw new InvalidArgumentError(`query parameter ${k} must be given once`);
        metadata[k.slice('metadata.'.length)] = v;
      }
      const state = query.state as Sandbox['state'] | 'all' | undefined;
      return { sandboxes: s.sandboxes.list(ctx, { state, metadata }).map(toApiSandbox) };
    },
  });

  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id',
    summary: 'Get a sandbox',
    tag: 'sandboxes',
    params: SandboxParams,
    responses: { 200: { description: 'The sandbox', schema: Sandbox } },
    handler: async ({ params, ctx }) => toApiSandbox(s.sandboxes.get(ctx, params.id)),
  });

  t.add({
    method: 'DELETE',
    url: '/v1/sandboxes/:id',
    summary: 'Kill a sandbox and remove its processes, mounts, cgroups and writable layer (idempotent)',
    tag: 'sandboxes',
    params: SandboxParams,
    responses: { 200: { description: 'The ended sandbox', schema: Sandbox } },
    handler: async ({ params, ctx }) => toApiSandbox(await s.sandboxes.kill(ctx, params.id)),
  });

  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/timeout',
    summary: 'Set the sandbox lifetime, counted from now',
    tag: 'sandboxes',
    params: SandboxParams,
    body: SetTimeoutRequest,
    responses: { 200: { description: 'The sandbox with its new expiry', schema: Sandbox } },
    handler: async ({ params, body, ctx }) => toApiSandbox(s.sandboxes.setTimeout(ctx, params.id, body.timeoutMs)),
  });

  lifecycleRoutes(t, s);
}

export const HealthResponse = z.object({ status: z.literal('ok'), version: z.string() });
