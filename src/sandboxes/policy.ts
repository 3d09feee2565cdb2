/**
 * A sandbox's lifecycle policy and the arithmetic of its clock, as pure
 * functions (unit-tested without a daemon):
 *
 *  - what happens when the timeout passes, or when the sandbox sat idle for
 *    `idleMs`: kill it, pause it (frozen, memory kept) or stop it (processes
 *    gone, disk kept);
 *  - whether a command or file call to a paused or stopped sandbox wakes it
 *    (`autoResume`) or answers 409;
 *  - how long a paused or stopped sandbox is kept before it is deleted
 *    (`deleteAfterMs`, retention), so nothing lives forever by accident.
 *
 * The timeout clock runs only while the sandbox runs: pausing or stopping it
 * keeps what was left (`remainingMs`), and waking it gives that back.
 */

/** `hibernate`: pause with memory on disk (needs the memorySnapshot capability, docs/adr/0018-memory-snapshots.md). */
export const ON_TIMEOUT = ['kill', 'pause', 'stop', 'hibernate'] as const;
export type OnTimeout = (typeof ON_TIMEOUT)[number];

export interface LifecyclePolicy {
  /** What the timeout (or `idleMs` without API activity) does to a running sandbox. */
  onTimeout: OnTimeout;
  /** A command or file call to a paused or stopped sandbox resumes or starts it first, instead of answering 409. */
  autoResume: boolean;
  /** Apply `onTimeout` after this long without API activity; null: only the timeout counts. */
  idleMs: number | null;
  /** A paused or stopped sandbox is deleted this long after it was paused or stopped. */
  deleteAfterMs: number;
}

/** Retention when neither the create nor the daemon (CAPSULE_DEFAULT_DELETE_AFTER_MS) says otherwise. */
export const DEFAULT_DELETE_AFTER_MS = 7 * 24 * 60 * 60_000;

export const DEFAULT_POLICY: Readonly<LifecyclePolicy> = Object.freeze({
  onTimeout: 'kill',
  autoResume: false,
  idleMs: null,
  deleteAfterMs: DEFAULT_DELETE_AFTER_MS,
});

/** What a create may say; every field optional. */
export interface LifecycleInput {
  onTimeout?: OnTimeout | undefined;
  autoResume?: boolean | undefined;
  idleMs?: number | undefined;
  deleteAfterMs?: number | undefined;
}

/** The policy a new sandbox gets: what the create asked, the daemon's retention, then the defaults. */
export function resolvePolicy(input: LifecycleInput | undefined, defaultDeleteAfterMs = DEFAULT_DELETE_AFTER_MS): LifecyclePolicy {
  return {
    onTimeout: input?.onTimeout ?? DEFAULT_POLICY.onTimeout,
    autoResume: input?.autoResume ?? DEFAULT_POLICY.autoResume,
    idleMs: input?.idleMs ?? null,
    deleteAfterMs: input?.deleteAfterMs ?? defaultDeleteAfterMs,
  };
}

/** A stored policy (JSON in the sandboxes row); rows from before policies existed get the defaults. */
export function parseStoredPolicy(json: string | null): LifecyclePolicy {
  if (!json) return { ...DEFAULT_POLICY };
  const p = JSON.parse(json) as Partial<LifecyclePolicy>;
  return {
    onTimeout: ON_TIMEOUT.includes(p.onTimeout as OnTimeout) ? (p.onTimeout as OnTimeout) : DEFAULT_POLICY.onTimeout,
    autoResume: p.autoResume === true,
    idleMs: typeof p.idleMs === 'number' ? p.idleMs : null,
    deleteAfterMs: typeof p.deleteAfterMs === 'number' ? p.deleteAfterMs : DEFAULT_POLICY.deleteAfterMs,
  };
}

/** What is left of a running sandbox's lifetime at `now` (never negative). */
export function remainingAt(expiresAt: number, now: number): number {
  return Math.max(0, expiresAt - now);
}

/**
 * The lifetime a sandbox gets when it is resumed or started: what the caller
 * asks, else what it had left, else (its timeout passed: that is why it was
 * paused or stopped) its whole timeout again, so it does not go back to sleep
 * at once.
 */
export function lifetimeAtWake(remainingMs: number | null, timeoutMs: number, askedMs?: number): number {
  if (askedMs !== undefined) return askedMs;
  // Under a second left would pause it again before the caller's first call lands.
  if (remainingMs !== null && remainingMs >= 1000) return remainingMs;
  return timeoutMs;
}

/** Why a running sandbox's policy acts now, or null: its timeout passed, or it sat idle too long. */
export function dueReason(
  s: { expiresAt: number; lifecycle: LifecyclePolicy },
  lastActivity: number,
  busy: boolean,
  now: number,
): 'timeout' | 'idle' | null {
  if (s.expiresAt <= now) return 'timeout';
  const idle = s.lifecycle.idleMs;
  if (idle !== null && !busy && now - lastActivity >= idle) return 'idle';
  return null;
}
