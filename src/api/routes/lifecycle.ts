/** Pause, resume, stop and start: one route per verb of the sandbox service (src/sandboxes/lifecycle-service.ts). */
import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import { PauseSandboxRequest, Sandbox, SandboxParams, WakeSandboxRequest } from '../../schemas/index.js';
import { toApiSandbox } from './sandboxes.js';

export function lifecycleRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/pause',
    summary:
      "Pause a running sandbox: every process is frozen (memory kept, no CPU) and its timeout clock stops; with memory: 'disk' it hibernates instead (processes and memory to disk, memory freed; state hibernated). Pausing a paused (or hibernated) sandbox does nothing",
    tag: 'sandboxes',
    params: SandboxParams,
    body: PauseSandboxRequest,
    responses: { 200: { description: 'The paused or hibernated sandbox', schema: Sandbox } },
    handler: async ({ params, body, ctx }) =>
      toApiSandbox(body?.memory === 'disk' ? await s.sandboxes.hibernate(ctx, params.id) : await s.sandboxes.pause(ctx, params.id)),
  });

  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/resume',
    summary: 'Resume a paused or hibernated sandbox where it was (a hibernated one is restored from disk), with the lifetime it had left (or timeoutMs). Resuming a running sandbox does nothing',
    tag: 'sandboxes',
    params: SandboxParams,
    body: WakeSandboxRequest,
    responses: { 200: { description: 'The running sandbox', schema: Sandbox } },
    handler: async ({ params, body, ctx }) => toApiSandbox(await s.sandboxes.resume(ctx, params.id, body)),
  });

  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/stop',
    summary: 'Stop a running or paused sandbox: its processes end and its memory is freed; its files, envs, metadata and limits are kept for start. Stopping a stopped sandbox does nothing',
    tag: 'sandboxes',
    params: SandboxParams,
    responses: { 200: { description: 'The stopped sandbox', schema: Sandbox } },
    handler: async ({ params, ctx }) => toApiSandbox(await s.sandboxes.stop(ctx, params.id)),
  });

  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/start',
    summary: 'Start a stopped sandbox again: same id, files, envs, metadata and limits, no processes but its agent. Starting a running sandbox does nothing',
    tag: 'sandboxes',
    params: SandboxParams,
    body: WakeSandboxRequest,
    responses: { 200: { description: 'The running sandbox', schema: Sandbox } },
    handler: async ({ params, body, ctx }) => toApiSandbox(await s.sandboxes.start(ctx, params.id, body)),
  });
}
