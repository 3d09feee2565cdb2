/**
 * History retention: an ended sandbox (killed, expired, failed) keeps its row, its log, its egress ledger
 * and its process journal, so that "why did it end" and "what did it reach" stay answerable after the fact.
 * Kept forever, a busy daemon's SQLite file would only grow: a thousand sandboxes an hour is 8.7 million
 * rows a year before their events (up to 1,000 each) and ledger entries (up to 10,000 each). So each
 * ended sandbox's history is deleted `retentionMs` after it ended (CAPSULE_HISTORY_RETENTION_MS, 7 days
 * by default; 0 keeps it forever). After that, the sandbox answers 404 like an id that never existed.
 *
 * Finished template builds (row and log file) follow the same retention through `onPass`, except each
 * template's latest build.
 *
 * What is not history stays: snapshots taken from the sandbox (they belong to their owner and are
 * deleted explicitly), templates, volumes. Live sandboxes (running, paused, stopped, transitional) are
 * never touched here; their own retention is lifecycle.deleteAfterMs (src/sandboxes/lifecycle-service.ts).
 *
 * The purge runs from the reaper's tick, at most every `everyMs`, and deletes at most `batch` sandboxes a
 * pass, each batch in one transaction, so a first run over a large backlog never holds the database for
 * long: the next passes take the rest.
 */
import type { Db } from '../store/db.js';
import { statementCache, type Statements } from '../store/statements.js';
import { TERMINAL_STATES } from './lifecycle.js';

export const DEFAULT_HISTORY_RETENTION_MS = 7 * 24 * 60 * 60_000;
const DEFAULT_EVERY_MS = 10 * 60_000;
const DEFAULT_BATCH = 500;

/** Tables that hold a sandbox's history, keyed by its id; the `sandboxes` row itself goes last. */
const HISTORY_TABLES = ['sandbox_events', 'egress_log', 'sandbox_network', 'processes'] as const;

export interface HistoryOptions {
  /** How long an ended sandbox's history is kept; 0 keeps it forever. */
  retentionMs: number;
  /** Least time between two passes of `maybePurge`. */
  everyMs?: number;
  /** Most sandboxes deleted per transaction. */
  batch?: number;
}

export class SandboxHistory {
  private readonly sql: Statements;
  private readonly everyMs: number;
  private readonly batch: number;
  private lastPass = Number.NEGATIVE_INFINITY;
  private readonly purgedListeners: Array<(ids: readonly string[]) => void> = [];
  private readonly passListeners: Array<(before: number) => void> = [];

  constructor(
    private readonly db: Db,
    private readonly opts: HistoryOptions,
  ) {
    this.sql = statementCache(db);
    this.everyMs = opts.everyMs ?? DEFAULT_EVERY_MS;
    this.batch = opts.batch ?? DEFAULT_BATCH;
  }

  /** `fn` hears which sandboxes' history was deleted (to drop in-memory state kept per id). */
  onPurged(fn: (ids: readonly string[]) => void): void {
    this.purgedListeners.push(fn);
  }

  /** `fn` runs on each pass of `maybePurge` with the same cut-off: other rooms' history (template builds). */
  onPass(fn: (before: number) => void): void {
    this.passListeners.push(fn);
  }

  /** A purge, unless one ran less than `everyMs` ago. Returns how many sandboxes' history went. */
  maybePurge(now = Date.now()): number {
    if (now - this.lastPass < this.everyMs) return 0;
    this.lastPass = now;
    const n = this.purge(now);
    // After the sandboxes' own purge, so a listener that throws (the caller logs it) never holds that up.
    if (this.opts.retentionMs > 0) for (const fn of this.passListeners) fn(now - this.opts.retentionMs);
    return n;
  }

  /** Delete the history of every sandbox that ended more than `retentionMs` before `now`. */
  purge(now = Date.now()): number {
    if (this.opts.retentionMs <= 0) return 0;
    const before = now - this.opts.retentionMs;
    const states = TERMINAL_STATES.map((s) => `'${s}'`).join(', ');
    const select = this.sql(`SELECT id FROM sandboxes WHERE state IN (${states}) AND ended_at IS NOT NULL AND ended_at < ? LIMIT ?`);
    let total = 0;
    for (;;) {
      const ids = (select.all(before, this.batch) as Array<{ id: string }>).map((r) => r.id);
      if (ids.length === 0) break;
      this.db.transaction(() => {
        for (const id of ids) {
          for (const table of HISTORY_TABLES) this.sql(`DELETE FROM ${table} WHERE sandbox_id = ?`).run(id);
          // The state check again: a row is only ever deleted while it is still ended.
          this.sql(`DELETE FROM sandboxes WHERE id = ? AND state IN (${states})`).run(id);
        }
      })();
      total += ids.length;
      for (const fn of this.purgedListeners) {
        try {
          fn(ids);
        } catch {
          // A listener's failure never undoes the purge.
        }
      }
      if (ids.length < this.batch) break;
    }
    return total;
  }
}
