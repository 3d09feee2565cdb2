/**
 * SQL for sandbox and process records. The state machine (lifecycle.ts) says
 * which transitions exist; this file persists each one as a compare-and-set
 * and maps rows to objects and back. Nothing here writes `state` blindly.
 */
import type { Db } from '../store/db.js';
import { statementCache, type Statements } from '../store/statements.js';
import type { ResourceLimits } from '../config/index.js';
import { canTransition, isTerminal, type SandboxState } from './lifecycle.js';
import { parseStoredPolicy, type LifecyclePolicy } from './policy.js';

export type SandboxStateName = SandboxState;

export interface SandboxRecord {
  id: string;
  template: string;
  state: SandboxStateName;
  owner: string | null;
  createdAt: number;
  expiresAt: number;
  envs: Record<string, string>;
  metadata: Record<string, string>;
  resources: ResourceLimits;
  endedAt: number | null;
  endReason: string | null;
  /** When the state last changed (ms since epoch). */
  stateChangedAt: number;
  /** The runtime backend that holds it (e.g. "crun"); null for rows from before backends were recorded. */
  runtime: string | null;
  /** What its timeout and idleness do, whether calls wake it, how long it is kept paused or stopped. */
  lifecycle: LifecyclePolicy;
  /** The lifetime it was given (at create or by the last setTimeout), in ms. */
  timeoutMs: number;
  /** Paused or stopped: what was left of its lifetime when its clock stopped. */
  remainingMs: number | null;
  /** Working directory and user of commands that name none (from the template's config). */
  /** From the template: commands' default directory and user; setuid: the container was made with setuid programs working. */
  defaults: { cwd?: string; user?: string; setuid?: true };
  /** Named volumes it attaches (src/volumes), in the order asked. */
  volumes: SandboxVolume[];
  /**
   * The read-only layers it stacks, as layer ids lowest first (`builtin:<name>@<builtAt>` or a
   * layer digest): what a snapshot of it builds on. Empty for rows from before snapshots.
   */
  layers: string[];
  /** The snapshot it was started from (src/snapshots), or null. */
  snapshot: string | null;
}

export interface SandboxVolume {
  volumeId: string;
  name: string;
  sizeMb: number;
  path: string;
  readOnly: boolean;
}

/** What changed in a sandbox's row, for observers (the sandbox log, src/sandboxes/events.ts). */
export type StoreChange =
  | { type: 'inserted'; rec: SandboxRecord }
  | { type: 'state'; id: string; from: SandboxStateName; to: SandboxStateName; at: number; reason: string | null }
  | { type: 'expiry'; id: string; state: SandboxStateName; expiresAt: number };

/** The outcome of a compare-and-set transition. */
export type TransitionResult = { ok: true; from: SandboxState } | { ok: false; current: SandboxState | undefined };

interface SandboxRow {
  id: string;
  template: string;
  state: SandboxStateName;
  owner: string | null;
  created_at: number;
  expires_at: number;
  envs: string;
  metadata: string;
  resources: string;
  ended_at: number | null;
  end_reason: string | null;
  state_changed_at: number | null;
  runtime: string | null;
  lifecycle: string | null;
  timeout_ms: number | null;
  remaining_ms: number | null;
  volumes: string | null;
  defaults: string | null;
  layers: string | null;
  snapshot: string | null;
}

export interface ProcessRecord {
  sandboxId: string;
  pid: number;
  argv: string[];
  cwd: string | null;
  /** The process's tag (migration 1 made the column; written since tags exist). */
  tag?: string | null;
  startedAt: number;
  endedAt: number | null;
  exitCode: number | null;
}

function fromRow(r: SandboxRow): SandboxRecord {
  return {
    id: r.id,
    template: r.template,
    state: r.state,
    owner: r.owner,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    envs: JSON.parse(r.envs) as Record<string, string>,
    metadata: JSON.parse(r.metadata) as Record<string, string>,
    resources: JSON.parse(r.resources) as ResourceLimits,
    endedAt: r.ended_at,
    endReason: r.end_reason,
    stateChangedAt: r.state_changed_at ?? r.created_at,
    runtime: r.runtime,
    lifecycle: parseStoredPolicy(r.lifecycle),
    // Rows from before lifetimes were recorded: the span they were created with.
    timeoutMs: r.timeout_ms ?? Math.max(1000, r.expires_at - r.created_at),
    remainingMs: r.remaining_ms,
    volumes: r.volumes ? (JSON.parse(r.volumes) as SandboxVolume[]) : [],
    defaults: r.defaults ? (JSON.parse(r.defaults) as SandboxRecord['defaults']) : {},
    layers: r.layers ? (JSON.parse(r.layers) as string[]) : [],
    snapshot: r.snapshot,
  };
}

export class SandboxStore {
  private readonly sql: Statements;
  /**
   * Rows of live sandboxes, as frozen objects: every command and file call
   * looks its sandbox up, and a SELECT plus three JSON.parse cost ~15 µs of each
   * exec. This store is the only writer of the table, and every write below
   * updates the cache in the same call, so it never disagrees with the file.
   */
  private readonly live = new Map<string, Readonly<SandboxRecord>>();
  private readonly watchers: Array<(c: StoreChange) => void> = [];

  constructor(private readonly db: Db) {
    this.sql = statementCache(db);
  }

  /** `fn` hears of every insert, state change and new expiry, after it is written (synchronously: keep it cheap). */
  onChange(fn: (c: StoreChange) => void): void {
    this.watchers.push(fn);
  }

  private emit(c: StoreChange): void {
    for (const w of this.watchers) {
      try {
        w(c);
      } catch {
        // An observer's failure never undoes or blocks a write.
      }
    }
  }

  /** Runs `fn` as one write transaction: one WAL commit for all its statements. */
  inTransaction(fn: () => void): void {
    this.db.transaction(fn)();
  }

  insert(s: SandboxRecord): void {
    this
      .sql(
        `INSERT INTO sandboxes (id, template, state, owner, created_at, expires_at, envs, metadata, resources, state_changed_at, runtime, defaults,
           lifecycle, timeout_ms, remaining_ms, volumes, layers, snapshot)
         VALUES (@id, @template, @state, @owner, @createdAt, @expiresAt, @envs, @metadata, @resources, @stateChangedAt, @runtime, @defaults,
           @lifecycle, @timeoutMs, @remainingMs, @volumes, @layers, @snapshot)`,
      )
      .run({
        ...s,
        envs: JSON.stringify(s.envs),
        metadata: JSON.stringify(s.metadata),
        resources: JSON.stringify(s.resources),
        lifecycle: JSON.stringify(s.lifecycle),
        volumes: s.volumes.length > 0 ? JSON.stringify(s.volumes) : null,
        defaults: JSON.stringify(s.defaults),
        layers: JSON.stringify(s.layers),
      });
    this.remember(s);
    this.emit({ type: 'inserted', rec: s });
  }

  get(id: string): SandboxRecord | undefined {
    const hit = this.live.get(id);
    if (hit) return hit;
    const row = this.sql('SELECT * FROM sandboxes WHERE id = ?').get(id) as SandboxRow | undefined;
    if (!row) return undefined;
    const rec = fromRow(row);
    this.remember(rec);
    return rec;
  }

  private remember(rec: SandboxRecord): void {
    if (isTerminal(rec.state)) this.live.delete(rec.id);
    else this.live.set(rec.id, Object.freeze({ ...rec }));
  }

  listByStates(states: readonly SandboxStateName[]): SandboxRecord[] {
    const marks = states.map(() => '?').join(',');
    const rows = this
      .sql(`SELECT * FROM sandboxes WHERE state IN (${marks}) ORDER BY created_at`)
      .all(...states) as SandboxRow[];
    return rows.map(fromRow);
  }

  listAll(limit = 1000): SandboxRecord[] {
    const rows = this.sql('SELECT * FROM sandboxes ORDER BY created_at DESC LIMIT ?').all(limit) as SandboxRow[];
    return rows.map(fromRow);
  }

  /**
   * Move a sandbox from its current state to `to`, if the state machine allows
   * that move and the current state is one of `from`. The UPDATE names the state
   * it read, so it changes nothing when someone else moved the sandbox first
   * (compare-and-set); the caller learns who won from the result. Entering a
   * terminal state records the reason and the time. `expiresAt` and
   * `remainingMs` change with the state when given (a pause stops the clock).
   */
  transition(
    id: string,
    from: readonly SandboxStateName[],
    to: SandboxStateName,
    opts: { reason?: string; at?: number; expiresAt?: number; remainingMs?: number } = {},
  ): TransitionResult {
    const row = this.sql('SELECT state FROM sandboxes WHERE id = ?').get(id) as { state: SandboxStateName } | undefined;
    const current = row?.state;
    if (current === undefined || !from.includes(current) || !canTransition(current, to)) return { ok: false, current };
    const at = opts.at ?? Date.now();
    const end = isTerminal(to);
    const r = this
      .sql(
        `UPDATE sandboxes SET state = @to, state_changed_at = @at,
           end_reason = CASE WHEN @end THEN @reason ELSE end_reason END,
           ended_at = CASE WHEN @end THEN @at ELSE ended_at END,
           expires_at = COALESCE(@expiresAt, expires_at),
           remaining_ms = COALESCE(@remainingMs, remaining_ms)
         WHERE id = @id AND state = @current`,
      )
      .run({
        id,
        to,
        at,
        current,
        end: end ? 1 : 0,
        reason: opts.reason ?? null,
        expiresAt: opts.expiresAt ?? null,
        remainingMs: opts.remainingMs ?? null,
      });
    if (r.changes !== 1) {
      this.live.delete(id);
      return { ok: false, current: this.get(id)?.state };
    }
    const cached = this.live.get(id);
    if (cached) {
      this.remember({
        ...cached,
        state: to,
        stateChangedAt: at,
        ...(opts.expiresAt !== undefined ? { expiresAt: opts.expiresAt } : {}),
        ...(opts.remainingMs !== undefined ? { remainingMs: opts.remainingMs } : {}),
        ...(end ? { endReason: opts.reason ?? null, endedAt: at } : {}),
      });
    }
    this.emit({ type: 'state', id, from: current, to, at, reason: opts.reason ?? null });
    return { ok: true, from: current };
  }

  /**
   * Only for a sandbox in `state` (a CAS on the state, so an ended sandbox's clock never moves).
   * `timeoutMs`, when given, becomes the lifetime a later wake falls back to.
   */
  setExpiry(id: string, state: SandboxStateName, expiresAt: number, timeoutMs?: number): boolean {
    const ok =
      this
        .sql('UPDATE sandboxes SET expires_at = ?, timeout_ms = COALESCE(?, timeout_ms) WHERE id = ? AND state = ?')
        .run(expiresAt, timeoutMs ?? null, id, state).changes === 1;
    const cached = this.live.get(id);
    if (ok && cached) this.remember({ ...cached, expiresAt, ...(timeoutMs !== undefined ? { timeoutMs } : {}) });
    else if (!ok) this.live.delete(id);
    if (ok) this.emit({ type: 'expiry', id, state, expiresAt });
    return ok;
  }

  /** How many sandboxes are in each state (rows of every state, ended ones too). */
  countByState(): Record<string, number> {
    const rows = this.sql('SELECT state, COUNT(*) AS n FROM sandboxes GROUP BY state').all() as Array<{ state: string; n: number }>;
    return Object.fromEntries(rows.map((r) => [r.state, r.n]));
  }

  expiredRunning(now: number): string[] {
    const rows = this
      .sql(`SELECT id FROM sandboxes WHERE state = 'running' AND expires_at <= ?`)
      .all(now) as Array<{ id: string }>;
    return rows.map((r) => r.id);
  }

  /** Paused and stopped sandboxes whose retention (expires_at while they sleep) has passed. */
  expiredAsleep(now: number): string[] {
    const rows = this
      .sql(`SELECT id FROM sandboxes WHERE state IN ('paused', 'stopped', 'hibernated') AND expires_at <= ?`)
      .all(now) as Array<{ id: string }>;
    return rows.map((r) => r.id);
  }

  /** Live sandboxes (any state but the final ones) that attach the volume. */
  usingVolume(volumeId: string): string[] {
    const rows = this
      .sql(`SELECT id FROM sandboxes WHERE volumes IS NOT NULL AND state NOT IN ('killed', 'expired', 'failed') AND instr(volumes, ?) > 0 ORDER BY created_at`)
      .all(`"${volumeId}"`) as Array<{ id: string }>;
    return rows.map((r) => r.id);
  }

  /** Live sandboxes (any state but the final ones) started from the snapshot. */
  usingSnapshot(snapshotId: string): string[] {
    const rows = this
      .sql(`SELECT id FROM sandboxes WHERE snapshot = ? AND state NOT IN ('killed', 'expired', 'failed') ORDER BY created_at`)
      .all(snapshotId) as Array<{ id: string }>;
    return rows.map((r) => r.id);
  }

  insertProcess(p: ProcessRecord): void {
    this
      .sql(
        `INSERT OR REPLACE INTO processes (sandbox_id, pid, argv, cwd, tag, started_at, ended_at, exit_code)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(p.sandboxId, p.pid, JSON.stringify(p.argv), p.cwd, p.tag ?? null, p.startedAt, p.endedAt, p.exitCode);
  }

  endProcess(sandboxId: string, pid: number, exitCode: number, at: number): void {
    this
      .sql('UPDATE processes SET exit_code = ?, ended_at = ? WHERE sandbox_id = ? AND pid = ? AND ended_at IS NULL')
      .run(exitCode, at, sandboxId, pid);
  }

  getProcess(sandboxId: string, pid: number): ProcessRecord | undefined {
    const r = this.sql('SELECT * FROM processes WHERE sandbox_id = ? AND pid = ?').get(sandboxId, pid) as
      | { sandbox_id: string; pid: number; argv: string; cwd: string | null; tag: string | null; started_at: number; ended_at: number | null; exit_code: number | null }
      | undefined;
    if (!r) return undefined;
    return {
      sandboxId: r.sandbox_id,
      pid: r.pid,
      argv: JSON.parse(r.argv) as string[],
      cwd: r.cwd,
      ...(r.tag !== null ? { tag: r.tag } : {}),
      startedAt: r.started_at,
      endedAt: r.ended_at,
      exitCode: r.exit_code,
    };
  }

  deleteProcesses(sandboxId: string): void {
    this.sql('DELETE FROM processes WHERE sandbox_id = ?').run(sandboxId);
  }
}
