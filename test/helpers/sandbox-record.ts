/** A sandbox row as the manager inserts it (state creating, busybox, small limits), for store-level unit tests. */
import type { SandboxRecord } from '../../src/sandboxes/store.js';

export function record(id: string): SandboxRecord {
  const now = Date.now();
  return {
    id,
    template: 'busybox',
    state: 'creating',
    owner: null,
    createdAt: now,
    expiresAt: now + 60_000,
    envs: {},
    metadata: {},
    resources: { cpus: 1, memoryMb: 256, diskMb: 512, pids: 256 } as SandboxRecord['resources'],
    endedAt: null,
    endReason: null,
    stateChangedAt: now,
    runtime: 'crun',
    lifecycle: { onTimeout: 'kill', autoResume: false } as SandboxRecord['lifecycle'],
    timeoutMs: 60_000,
    remainingMs: null,
    defaults: {},
    volumes: [],
    layers: [],
    snapshot: null,
  };
}
