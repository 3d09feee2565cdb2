/**
 * The sandbox log: what the daemon saw happen to each sandbox, for its owner. Lifecycle events come from
 * the sandbox store's writes (every state change and new timeout is one compare-and-set there, so none is
 * missed and none is invented); command events come from the command service (started, ended with exit
 * code or signal, OOM-killed, timed out). One service behind every view: REST `GET /v1/sandboxes/:id/logs`,
 * the SDK's `sandbox.logs()`, `capsule logs <id>`, and E2B's two log routes (src/e2b/control.ts).
 *
 * Bounded: at most `maxPerSandbox` entries per sandbox (the oldest go first), messages and fields cut to
 * fixed lengths (a command line is the caller's, but can be long). Entries outlive the sandbox, like the
 * egress ledger, so "why did it end" stays answerable. Writes are batched (one transaction every
 * `flushMs`, as the process journal does) so that a command costs no SQLite write of its own; a read
 * flushes first, so it always sees what happened before it.
 */
import type { Db } from '../store/db.js';
import { statementCache, type Statements } from '../store/statements.js';
import type { RequestContext } from '../auth/context.js';
import type { SandboxLogEntry, SandboxLogLevel, SandboxLogResponse } from '../schemas/logs.js';
import type { SandboxState } from './lifecycle.js';
import type { SandboxRecord, SandboxStore, StoreChange } from './store.js';

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const satisfies readonly SandboxLogLevel[];
export const MAX_EVENTS_PER_SANDBOX = 1000;
const DEFAULT_FLUSH_MS = 50;
/** A flood of events (thousands of commands a second) is written at once rather than piling up in memory. */
const MAX_PENDING = 2000;
const MAX_MESSAGE = 500;
const MAX_FIELD = 300;
const MAX_FIELDS = 16;
const DEFAULT_LIMIT = 200;

export interface SandboxEvent {
  level: SandboxLogLevel;
  event: string;
  message: string;
  fields?: Record<string, string | number | boolean | null | undefined>;
}

/**
 * What the command service (and anything else) needs to write to the log. An entry may be given as a
 * function that builds it, called when the batch is written: a command records two entries on its hot
 * path, and their text is not needed before then (the time is taken at the call).
 */
export interface SandboxEventSink {
  record(sandboxId: string, e: SandboxEvent | (() => SandboxEvent)): void;
}

export interface LogQuery {
  /** Only entries after this cursor (seq). */
  since?: number | undefined;
  /** Only entries at or after (asc) / at or before (desc) this time, in ms since the epoch. */
  start?: number | undefined;
  limit?: number | undefined;
  /** This level and above. */
  level?: SandboxLogLevel | undefined;
  /** Entries whose message contains this (case-sensitive). */
  search?: string | undefined;
  /** Oldest first (default) or newest first. */
  order?: 'asc' | 'desc' | undefined;
}

interface Row {
  seq: number;
  sandbox_id: string;
  at: number;
  level: number;
  event: string;
  message: string;
  fields: string;
}

interface Pending {
  sandboxId: string;
  at: number;
  e: SandboxEvent | (() => SandboxEvent);
}

const cut = (s: string, n: number): string => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

/** An entry as stored: level as its rank, text cut to the bounds, fields as JSON. */
function toRow(p: Pending): Omit<Row, 'seq'> {
  const e = typeof p.e === 'function' ? p.e() : p.e;
  const fields: Record<string, string> = {};
  for (const [k, v] of Object.entries(e.fields ?? {}).slice(0, MAX_FIELDS)) {
    if (v === undefined || v === null) continue;
    fields[cut(k, 40)] = cut(String(v), MAX_FIELD);
  }
  return {
    sandbox_id: p.sandboxId,
    at: p.at,
    level: LOG_LEVELS.indexOf(e.level),
    event: cut(e.event, 40),
    message: cut(e.message, MAX_MESSAGE),
    fields: JSON.stringify(fields),
  };
}

export class SandboxEventLog implements SandboxEventSink {
  private readonly sql: Statements;
  private pending: Pending[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly max: number;
  private readonly flushMs: number;
  private readonly onError: (err: unknown) => void;

  constructor(
    private readonly db: Db,
    private readonly sandboxes: { get(ctx: RequestContext, id: string): SandboxRecord },
    opts: { maxPerSandbox?: number; flushMs?: number; onError?: (err: unknown) => void } = {},
  ) {
    this.sql = statementCache(db);
    this.max = opts.maxPerSandbox ?? MAX_EVENTS_PER_SANDBOX;
    this.flushMs = opts.flushMs ?? DEFAULT_FLUSH_MS;
    this.onError = opts.onError ?? ((err) => process.emitWarning(`sandbox log entries not written: ${String(err)}`));
  }

  /** Follow a store's writes: every sandbox created, every state change, every new timeout. */
  attach(store: SandboxStore): void {
    store.onChange((c) => this.fromStore(c));
  }

  record(sandboxId: string, e: SandboxEvent | (() => SandboxEvent)): void {
    // Kept as given (built, if a function) and cut to size when written: a command records two entries, on its hot path.
    this.pending.push({ sandboxId, at: Date.now(), e });
    if (this.pending.length >= MAX_PENDING) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), this.flushMs).unref();
  }

  /** Write what waits, then drop each touched sandbox's entries beyond the bound. */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    try {
      this.db.transaction(() => {
        const insert = this.sql('INSERT INTO sandbox_events (sandbox_id, at, level, event, message, fields) VALUES (@sandbox_id, @at, @level, @event, @message, @fields)');
        for (const p of batch) insert.run(toRow(p));
        const prune = this.sql(
          `DELETE FROM sandbox_events WHERE sandbox_id = @id AND seq <=
             (SELECT seq FROM sandbox_events WHERE sandbox_id = @id ORDER BY seq DESC LIMIT 1 OFFSET @keep)`,
        );
        for (const id of new Set(batch.map((p) => p.sandboxId))) prune.run({ id, keep: this.max });
      })();
    } catch (err) {
      this.onError(err);
    }
  }

  /** The owner's view of one sandbox's log (any state, ended ones too). */
  list(ctx: RequestContext, id: string, q: LogQuery = {}): SandboxLogResponse {
    this.sandboxes.get(ctx, id);
    this.flush();
    const desc = q.order === 'desc';
    const since = q.since ?? 0;
    const rows = this.sql(
      `SELECT * FROM sandbox_events
        WHERE sandbox_id = @id AND seq > @since AND level >= @level
          AND (@start IS NULL OR ${desc ? 'at <= @start' : 'at >= @start'})
          AND (@search IS NULL OR instr(message, @search) > 0)
        ORDER BY seq ${desc ? 'DESC' : 'ASC'} LIMIT @limit`,
    ).all({
      id,
      since,
      level: q.level ? LOG_LEVELS.indexOf(q.level) : 0,
      start: q.start ?? null,
      search: q.search ?? null,
      limit: q.limit ?? DEFAULT_LIMIT,
    }) as Row[];
    const entries = rows.map(toEntry);
    const cursor = entries.reduce((m, e) => Math.max(m, e.seq), since);
    return { entries, cursor };
  }

  close(): void {
    this.flush();
  }

  private fromStore(c: StoreChange): void {
    switch (c.type) {
      case 'inserted':
        this.record(c.rec.id, {
          level: 'info',
          event: 'state.creating',
          message: `created from ${c.rec.snapshot ? `snapshot ${c.rec.snapshot}` : `template ${c.rec.template}`}`,
          fields: { template: c.rec.template, snapshot: c.rec.snapshot, runtime: c.rec.runtime, memoryMb: c.rec.resources.memoryMb, cpus: c.rec.resources.cpus },
        });
        return;
      case 'state':
        this.record(c.id, {
          level: levelOf(c.to),
          event: `state.${c.to}`,
          message: describe(c.from, c.to) + (c.reason ? `: ${c.reason}` : ''),
          fields: { from: c.from, to: c.to, reason: c.reason },
        });
        return;
      case 'expiry':
        this.record(c.id, {
          level: 'debug',
          event: 'timeout',
          message: `timeout set: ends at ${new Date(c.expiresAt).toISOString()}`,
          fields: { expiresAt: new Date(c.expiresAt).toISOString() },
        });
        return;
    }
  }
}

function levelOf(to: SandboxState): SandboxLogLevel {
  switch (to) {
    case 'failed':
      return 'error';
    case 'creating':
    case 'pausing':
    case 'resuming':
    case 'stopping':
    case 'starting':
    case 'snapshotting':
    case 'hibernating':
    case 'restoring':
      return 'debug';
    default:
      return 'info';
  }
}

function describe(from: SandboxState, to: SandboxState): string {
  switch (to) {
    case 'running':
      if (from === 'creating') return 'running';
      if (from === 'resuming' || from === 'paused') return 'resumed';
      if (from === 'starting' || from === 'stopped') return 'started again';
      if (from === 'restoring' || from === 'hibernated') return 'restored from hibernation (memory kept)';
      if (from === 'snapshotting') return 'snapshot taken; running';
      return 'running';
    case 'paused':
      return from === 'snapshotting' ? 'snapshot taken; paused' : 'paused (memory kept)';
    case 'stopped':
      return 'stopped (files kept, processes ended)';
    case 'hibernated':
      return 'hibernated (processes and memory on disk, memory freed)';
    case 'killed':
      return 'killed';
    case 'expired':
      return 'expired (its timeout passed)';
    case 'failed':
      return 'failed';
    case 'snapshotting':
      return 'taking a snapshot';
    default:
      return to;
  }
}

function toEntry(r: Row): SandboxLogEntry {
  return {
    seq: r.seq,
    at: new Date(r.at).toISOString(),
    level: LOG_LEVELS[r.level] ?? 'info',
    event: r.event,
    message: r.message,
    fields: JSON.parse(r.fields) as Record<string, string>,
  };
}
