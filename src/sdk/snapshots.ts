/**
 * Filesystem snapshots: `sandbox.snapshot({ name })` takes one, `Sandbox.create({ snapshot })`
 * starts any number of sandboxes from it, and `Snapshot.list/get/delete` manage them. Deleting
 * one that a live sandbox was started from answers ConflictError.
 */
import { ListSnapshotsResponse, Snapshot as SnapshotSchema, type Snapshot as SnapshotInfo } from '../schemas/index.js';
import { HttpClient } from './http.js';
import { pickConnection, resolveConnection, type ConnectionOptions } from './options.js';

export type { SnapshotInfo };

export interface SnapshotOptions {
  /** A name unique among your snapshots, usable wherever the id is. */
  name?: string;
  metadata?: Record<string, string>;
}

function client(opts: ConnectionOptions): HttpClient {
  return new HttpClient(resolveConnection(pickConnection(opts)));
}

const snapshotPath = (ref: string) => `/snapshots/${encodeURIComponent(ref)}`;

/** Take a snapshot of sandbox `id` (what `sandbox.snapshot()` calls). */
export function takeSnapshot(http: HttpClient, id: string, opts: SnapshotOptions, timeoutMs: number): Promise<SnapshotInfo> {
  const body = { ...(opts.name !== undefined ? { name: opts.name } : {}), ...(opts.metadata !== undefined ? { metadata: opts.metadata } : {}) };
  return http.json('POST', `/sandboxes/${encodeURIComponent(id)}/snapshots`, SnapshotSchema, { json: body, timeoutMs });
}

export const Snapshot = {
  /** Your snapshots; `sandboxId` narrows them to those taken of one sandbox. */
  async list(opts: ConnectionOptions & { sandboxId?: string } = {}): Promise<SnapshotInfo[]> {
    const query: Array<[string, string]> = opts.sandboxId !== undefined ? [['sandboxId', opts.sandboxId]] : [];
    return (await client(opts).json('GET', '/snapshots', ListSnapshotsResponse, { query })).snapshots;
  },
  /** By id or name. NotFoundError when you have no such snapshot. */
  async get(ref: string, opts: ConnectionOptions = {}): Promise<SnapshotInfo> {
    return client(opts).json('GET', snapshotPath(ref), SnapshotSchema);
  },
  /** Delete it. ConflictError while a live sandbox was started from it. */
  async delete(ref: string, opts: ConnectionOptions = {}): Promise<void> {
    await client(opts).empty('DELETE', snapshotPath(ref));
  },
};
