/**
 * MCP tools for filesystem snapshots (src/snapshots): take one of a sandbox, list them, delete one.
 * `sandbox_create` starts a sandbox from one (its `snapshot` field). Schemas derive from the API's
 * (src/schemas/snapshots.ts) through snakeObject, like every other tool's.
 */
import { z } from 'zod';
import { CreateSnapshotRequest, ForkSandboxRequest, ListSnapshotsQuery, SandboxId, Snapshot as SnapshotSchema, SnapshotRef, snakeObject } from '../schemas/index.js';
import type { Snapshot as SnapshotInfo } from '../schemas/index.js';
import type { ToolDef } from './tools.js';

const SnapshotSummary = snakeObject(SnapshotSchema.omit({ id: true })).extend({ snapshot_id: SnapshotSchema.shape.id });

function summary(s: SnapshotInfo): z.infer<typeof SnapshotSummary> {
  return {
    snapshot_id: s.id,
    ...(s.name !== undefined ? { name: s.name } : {}),
    sandbox_id: s.sandboxId,
    template: s.template,
    ...(s.parentSnapshot !== undefined ? { parent_snapshot: s.parentSnapshot } : {}),
    size_bytes: s.sizeBytes,
    layers: s.layers,
    created_at: s.createdAt,
    metadata: s.metadata,
    used_by: s.usedBy,
  };
}

const tool = <I extends z.ZodObject, O extends z.ZodObject>(def: ToolDef<I, O>): ToolDef<I, O> => def;

const sandboxSnapshot = tool({
  name: 'sandbox_snapshot',
  description:
    "Take a filesystem snapshot of a running or paused sandbox: a consistent copy of its files (processes are frozen while they are copied). Start any number of new sandboxes from it with sandbox_create's snapshot field; each gets its own copy-on-write files.",
  input: snakeObject(CreateSnapshotRequest).extend({ sandbox_id: SandboxId.describe('The sandbox to snapshot') }),
  output: SnapshotSummary,
  annotations: { title: 'Snapshot sandbox', readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
  async handler(input, ctx) {
    const s = await ctx.backend.snapshot(input.sandbox_id, { name: input.name, metadata: input.metadata });
    return { structured: summary(s), text: `Snapshot ${s.id}${s.name ? ` (${s.name})` : ''} of ${s.sandboxId}: ${s.sizeBytes} bytes of changes. Start sandboxes from it with sandbox_create snapshot=${s.name ?? s.id}.` };
  },
});

const snapshotList = tool({
  name: 'snapshot_list',
  description: 'List your filesystem snapshots, with the live sandboxes started from each.',
  input: snakeObject(ListSnapshotsQuery),
  output: z.object({ snapshots: z.array(SnapshotSummary) }),
  annotations: { title: 'List snapshots', readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  async handler(input, ctx) {
    const list = await ctx.backend.listSnapshots({ sandboxId: input.sandbox_id });
    return {
      structured: { snapshots: list.map(summary) },
      text: list.length ? list.map((s) => `${s.id}  ${s.name ?? '-'}  ${s.template}  ${s.sizeBytes} bytes  ${s.createdAt}`).join('\n') : 'No snapshots.',
    };
  },
});

const snapshotDelete = tool({
  name: 'snapshot_delete',
  description: 'Delete a filesystem snapshot. Refused while a live sandbox was started from it.',
  input: z.object({ snapshot: SnapshotRef }),
  output: z.object({ snapshot: SnapshotRef, deleted: z.literal(true).describe('It is gone') }),
  annotations: { title: 'Delete snapshot', readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false },
  async handler(input, ctx) {
    await ctx.backend.deleteSnapshot(input.snapshot);
    return { structured: { snapshot: input.snapshot, deleted: true as const }, text: `Snapshot ${input.snapshot} deleted.` };
  },
});

const sandboxFork = tool({
  name: 'sandbox_fork',
  description:
    "Fork a running sandbox into count new ones through a snapshot of its files. With memory: true every fork continues from the same instant with the source's processes and memory (needs capabilities.memorySnapshot), each with its own id, hostname and copy-on-write files. The source runs on.",
  input: snakeObject(ForkSandboxRequest).extend({ sandbox_id: SandboxId.describe('The sandbox to fork') }),
  output: z.object({ snapshot_id: z.string().describe('The snapshot the forks start from'), sandbox_ids: z.array(SandboxId).describe('The forks, running') }),
  annotations: { title: 'Fork sandbox', readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
  async handler(input, ctx) {
    const r = await ctx.backend.fork(input.sandbox_id, { count: input.count ?? 1, memory: input.memory === true });
    return {
      structured: { snapshot_id: r.snapshotId, sandbox_ids: r.sandboxIds },
      text: `Forked ${input.sandbox_id}${input.memory ? ' with its memory' : ''} into ${r.sandboxIds.join(', ')}.`,
    };
  },
});

export const SNAPSHOT_TOOLS = [sandboxSnapshot, snapshotList, snapshotDelete, sandboxFork] as const;
