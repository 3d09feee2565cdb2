/** Filesystem snapshots: immutable layers of a sandbox's files that new sandboxes start from. */
import { z } from 'zod';
import { Metadata, SandboxId, Timestamp } from './common.js';

export const SNAPSHOT_ID_RE = /^snap-[a-z0-9]{12}$/;

export const SnapshotId = z.string().regex(SNAPSHOT_ID_RE, 'a snapshot id looks like snap-xxxxxxxxxxxx').describe('Snapshot id, e.g. snap-4k2m9q0c7d1a');

const NAME_RE = /^[a-z0-9][a-z0-9._-]*$/;

export const SnapshotName = z
  .string()
  .min(1)
  .max(63)
  .regex(NAME_RE, 'snapshot names are lowercase letters, digits, . _ - (starting with a letter or digit)')
  .refine((n) => !SNAPSHOT_ID_RE.test(n), 'a snapshot name may not look like a snapshot id (snap-xxxxxxxxxxxx)')
  .describe("Snapshot name, unique among its owner's snapshots");

/** Where a snapshot is named: by id or by the caller's name for it. */
export const SnapshotRef = z
  .string()
  .min(1)
  .max(63)
  .regex(NAME_RE, 'a snapshot id (snap-…) or name')
  .describe("A snapshot: its id (snap-…) or its name among the caller's snapshots");

export const CreateSnapshotRequest = z
  .object({
    name: SnapshotName.optional(),
    metadata: Metadata.optional(),
  })
  .strict()
  .describe('Take a filesystem snapshot: an empty body is fine');
export type CreateSnapshotRequest = z.infer<typeof CreateSnapshotRequest>;

export const Snapshot = z.object({
  id: SnapshotId,
  name: SnapshotName.optional().describe('Its name (absent when it was taken without one)'),
  sandboxId: SandboxId.describe('The sandbox it was taken of (which may have ended since)'),
  template: z.string().describe('The template that sandbox was started from: sandboxes started from the snapshot get its layers and this name'),
  parentSnapshot: SnapshotId.optional().describe('The snapshot that sandbox was itself started from, if any'),
  sizeBytes: z.number().int().describe('Disk space of the snapshot\'s own layer: what the sandbox had written (its template\'s layers are shared, not counted)'),
  layers: z.number().int().describe('Read-only layers a sandbox started from it stacks: its template\'s, its parent snapshots\', and its own'),
  createdAt: Timestamp,
  metadata: z.record(z.string(), z.string()),
  usedBy: z.array(SandboxId).describe('Live sandboxes (running, paused or stopped) started from it; it cannot be deleted while any is'),
});
export type Snapshot = z.infer<typeof Snapshot>;

export const ListSnapshotsQuery = z
  .object({ sandboxId: SandboxId.optional().describe('Only snapshots taken of this sandbox') })
  .strict();
export const ListSnapshotsResponse = z.object({ snapshots: z.array(Snapshot) });
export const SnapshotParams = z.object({ ref: SnapshotRef });
