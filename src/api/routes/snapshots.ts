/** Filesystem snapshots: thin routes over the snapshot service (src/snapshots/service.ts). */
import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import { CreateSnapshotRequest, ForkSandboxRequest, ForkSandboxResponse, ListSnapshotsQuery, ListSnapshotsResponse, SandboxParams, Snapshot, SnapshotParams } from '../../schemas/index.js';
import { toApiSandbox } from './sandboxes.js';

export function snapshotRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/snapshots',
    summary:
      "Take a filesystem snapshot of a running or paused sandbox: a consistent copy of its files (its processes are frozen while they are copied; a paused one stays paused) that any number of new sandboxes start from (POST /v1/sandboxes with snapshot)",
    tag: 'snapshots',
    params: SandboxParams,
    body: CreateSnapshotRequest,
    errors: ['conflict', 'unsupported', 'runtime_error'],
    responses: { 201: { description: 'The snapshot', schema: Snapshot } },
    handler: async ({ params, body, ctx }) => s.snapshots.take(ctx, params.id, body),
  });

  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/fork',
    summary:
      "Fork a running sandbox into count new ones through a snapshot of its files; with memory: true each fork continues from the same instant with the source's processes and memory (CRIU: capabilities.memorySnapshot), with its own id, hostname and copy-on-write files. The source runs on",
    tag: 'snapshots',
    params: SandboxParams,
    body: ForkSandboxRequest,
    errors: ['conflict', 'unsupported', 'runtime_error'],
    responses: { 201: { description: 'The snapshot and the forks', schema: ForkSandboxResponse } },
    handler: async ({ params, body, ctx }) => {
      const r = await s.snapshots.fork(ctx, params.id, { count: body?.count ?? 1, memory: body?.memory === true });
      return { snapshot: r.snapshot, sandboxes: r.sandboxes.map(toApiSandbox) };
    },
  });

  t.add({
    method: 'GET',
    url: '/v1/snapshots',
    summary: "The caller's snapshots, each with the live sandboxes started from it",
    tag: 'snapshots',
    query: ListSnapshotsQuery,
    responses: { 200: { description: 'Snapshots', schema: ListSnapshotsResponse } },
    handler: async ({ query, ctx }) => ({ snapshots: s.snapshots.list(ctx, query) }),
  });

  t.add({
    method: 'GET',
    url: '/v1/snapshots/:ref',
    summary: 'Get a snapshot by id or name: its size, template, source sandbox and when it was taken',
    tag: 'snapshots',
    params: SnapshotParams,
    responses: { 200: { description: 'The snapshot', schema: Snapshot } },
    handler: async ({ params, ctx }) => s.snapshots.get(ctx, params.ref),
  });

  t.add({
    method: 'DELETE',
    url: '/v1/snapshots/:ref',
    summary: 'Delete a snapshot; 409 while a live sandbox (running, paused or stopped) was started from it. Snapshots taken of those sandboxes keep working',
    tag: 'snapshots',
    params: SnapshotParams,
    errors: ['conflict'],
    responses: { 204: { description: 'Deleted' } },
    handler: async ({ params, ctx }) => {
      await s.snapshots.remove(ctx, params.ref);
      return undefined;
    },
  });
}
