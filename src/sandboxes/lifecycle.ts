/**
 * The sandbox state machine: every state a sandbox can be in, which
 * transitions are allowed, and which operations each state admits. This is the
 * one place that knows; the manager asks it and the store persists each
 * transition as a compare-and-set, so two actors (a kill and a create
 * finishing, an expiry and a kill) can never both win.
 *
 *   creating ─┬─> running ─┬─> pausing ──> paused ──> resuming ──> running
 *             │            ├─> stopping ─> stopped ─> starting ──> running
 *             │            ├─> hibernating ─> hibernated ─> restoring ──> running
 *             │            └─> snapshotting ──> running
 *             └─> (any live state) ──> killed | expired | failed   (terminal)
 *
 * Pause/resume, stop/start and filesystem snapshots move through these
 * states in lifecycle-service.ts (docs/adr/0007-lifecycle-pause-stop-retention.md,
 * docs/adr/0013-snapshots-and-forks.md); a paused sandbox is snapshotted without
 * leaving `paused`. Hibernate (pause with `memory: 'disk'`) dumps every process
 * to disk with CRIU and frees the sandbox's memory; `hibernated` is a resting
 * state like `stopped` (it survives daemon restarts), and a hibernated sandbox
 * may also be stopped (its memory image is dropped)
 * (docs/adr/0018-memory-snapshots.md).
 */
import { ConflictError } from '../errors/index.js';

export const SANDBOX_STATES = [
  'creating',
  'running',
  'pausing',
  'paused',
  'resuming',
  'stopping',
  'stopped',
  'starting',
  'snapshotting',
  'hibernating',
  'hibernated',
  'restoring',
  'killed',
  'expired',
  'failed',
] as const;
export type SandboxState = (typeof SANDBOX_STATES)[number];

/** Final states: the sandbox's container, mounts and writable layer are gone (or going). */
export const TERMINAL_STATES = ['killed', 'expired', 'failed'] as const satisfies readonly SandboxState[];
export type TerminalState = (typeof TERMINAL_STATES)[number];

/** States in which a sandbox exists and holds resources: everything but the terminal ones. */
export const LIVE_STATES: readonly SandboxState[] = SANDBOX_STATES.filter((s) => !(TERMINAL_STATES as readonly string[]).includes(s));

/** States whose work is in flight: a second operation must wait for it or be refused. */
export const TRANSITIONAL_STATES = ['creating', 'pausing', 'resuming', 'stopping', 'starting', 'snapshotting', 'hibernating', 'restoring'] as const satisfies readonly SandboxState[];

const END: readonly SandboxState[] = TERMINAL_STATES;

/** Allowed transitions: from → the states it may move to. Any live state may end. */
export const TRANSITIONS: Readonly<Record<SandboxState, readonly SandboxState[]>> = {
  creating: ['running', ...END],
  running: ['pausing', 'stopping', 'snapshotting', 'hibernating', ...END],
  pausing: ['paused', 'running', ...END],
  paused: ['resuming', 'stopping', ...END],
  resuming: ['running', 'paused', ...END],
  stopping: ['stopped', ...END],
  stopped: ['starting', ...END],
  starting: ['running', 'stopped', ...END],
  snapshotting: ['running', ...END],
  /** A failed dump leaves it running. */
  hibernating: ['hibernated', 'running', ...END],
  hibernated: ['restoring', 'stopping', ...END],
  /** A failed restore leaves it hibernated, its images kept. */
  restoring: ['running', 'hibernated', ...END],
  killed: [],
  expired: [],
  failed: [],
};

export function isTerminal(s: SandboxState): s is TerminalState {
  return (TERMINAL_STATES as readonly string[]).includes(s);
}

export function isLive(s: SandboxState): boolean {
  return !isTerminal(s);
}

export function canTransition(from: SandboxState, to: SandboxState): boolean {
  return TRANSITIONS[from].includes(to);
}

/**
 * What each operation needs; the services refuse the rest with a conflict
 * naming the state. A lifecycle verb asked of a sandbox already where it leads
 * (pause of a paused one, start of a running one) is admitted and does nothing.
 */
export const OPERATION_STATES = {
  /** Commands, files, code: anything that talks to the agent. */
  use: ['running'],
  setTimeout: ['running'],
  pause: ['running', 'paused'],
  /** Pause with memory: 'disk'. */
  hibernate: ['running', 'hibernated'],
  resume: ['paused', 'hibernated', 'running'],
  stop: ['running', 'paused', 'hibernated', 'stopped'],
  start: ['stopped', 'running'],
  /** A filesystem snapshot: of a running sandbox (frozen meanwhile) or a paused one (it stays paused). */
  snapshot: ['running', 'paused'],
  kill: LIVE_STATES,
} as const satisfies Record<string, readonly SandboxState[]>;
export type Operation = keyof typeof OPERATION_STATES;

/** The error for an operation asked of a sandbox in a state that does not admit it. */
export function wrongState(id: string, state: SandboxState, what: string, endReason?: string | null): ConflictError {
  const why = endReason ? ` (${endReason})` : '';
  return new ConflictError(`cannot ${what}: sandbox ${id} is ${state}${why}`, { id, state });
}

/** Throws unless `state` admits the operation. */
export function requireState(id: string, state: SandboxState, op: Operation, what: string, endReason?: string | null): void {
  if (!(OPERATION_STATES[op] as readonly SandboxState[]).includes(state)) throw wrongState(id, state, what, endReason);
}
