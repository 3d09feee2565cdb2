/**
 * Can a pooled sandbox serve a create request? Pure, so the rules are unit
 * tested without containers.
 *
 * A pooled container was started with the daemon's default resources. Some
 * limits are cgroup values the runtime can change on a running container
 * (memory, cpus, pids): those are applied at claim. Everything else is fixed
 * at start (and fields added later, like a disk size, are unknown here), so
 * any other field must be equal, compared generically. Memory has one more
 * condition: /dev and /dev/shm are tmpfs mounts sized from the memory limit
 * at start (see tmpfsLimits), and a claim cannot resize them, so a new memory
 * limit is only taken when it implies the same tmpfs sizes as the old one;
 * otherwise the request gets a cold sandbox, sized as a fresh one would be.
 */
import type { ResourceLimits } from '../config/index.js';
import { tmpfsLimits } from '../runtime/bundle.js';

/** The limits a claim can change on a running container (RuntimeDriver.update). */
export type UpdatableLimits = Pick<ResourceLimits, 'cpus' | 'memoryMb' | 'pids'>;
export const UPDATABLE_FIELDS: ReadonlySet<string> = new Set<keyof UpdatableLimits>(['cpus', 'memoryMb', 'pids']);

export type PoolFit =
  | { ok: true; /** Only the fields that differ; empty when the pooled limits already match. */ update: Partial<UpdatableLimits> }
  | { ok: false; reason: string };

/** `canUpdate`: the backend can change cgroup limits of a running sandbox (its updateResources capability). */
export function poolFit(pooled: ResourceLimits, wanted: ResourceLimits, canUpdate = true): PoolFit {
  const update: Record<string, number> = {};
  const p = pooled as unknown as Record<string, unknown>;
  const w = wanted as unknown as Record<string, unknown>;
  for (const key of new Set([...Object.keys(p), ...Object.keys(w)])) {
    if (sameValue(p[key], w[key])) continue;
    if (!UPDATABLE_FIELDS.has(key) || typeof w[key] !== 'number') {
      return { ok: false, reason: `resources.${key} is fixed when a sandbox starts` };
    }
    if (!canUpdate) return { ok: false, reason: `resources.${key} differs and this backend cannot change limits of a running sandbox` };
    update[key] = w[key];
  }
  if (update.memoryMb !== undefined && !sameValue(tmpfsLimits(pooled.memoryMb), tmpfsLimits(wanted.memoryMb))) {
    return { ok: false, reason: 'resources.memoryMb changes the size of /dev and /dev/shm, which is fixed when a sandbox starts' };
  }
  return { ok: true, update: update as Partial<UpdatableLimits> };
}

/** Structural equality for the JSON-like values resource limits hold. */
function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ao = a as Record<string, unknown>;
  const bo = b as Record<string, unknown>;
  const keys = new Set([...Object.keys(ao), ...Object.keys(bo)]);
  for (const k of keys) if (!sameValue(ao[k], bo[k])) return false;
  return true;
}
