/**
 * The egress ledger: one entry per outbound attempt of a sandbox (a TCP
 * connection or a DNS lookup), with what it tried to reach, which process made
 * it when the relay could tell, the verdict and the rule behind it, and for
 * allowed connections the bytes each way and how long it lasted.
 *
 * An allowed connection is written when it is decided (state `open`) and
 * written again when it ends (`closed`, with bytes and duration); each write
 * takes the next cursor value, so a follower that asks for everything after its
 * last cursor sees both and can match them by `id`. Entries live in SQLite,
 * survive restarts, and are bounded per sandbox (the oldest go first).
 */
import { EventEmitter } from 'node:events';
import type { Db } from '../store/db.js';
import { statementCache, type Statements } from '../store/statements.js';

export interface LedgerEntry {
  id: number;
  /** Cursor: strictly increasing over every write of the whole ledger. */
  seq: number;
  sandboxId: string;
  /** When the attempt was made (ms since epoch). */
  at: number;
  protocol: 'tcp' | 'dns';
  /** The name the sandbox asked for (DNS, or the name behind a stand-in address), or what its SNI/Host claimed. */
  name: string | null;
  /** The address dialled (or, for DNS, the first real address found). */
  address: string | null;
  port: number | null;
  /** Process inside the sandbox (its own pid and name), when the relay could find it. */
  pid: number | null;
  command: string | null;
  verdict: 'allowed' | 'refused';
  /** The rule that decided, or a reason code (see policy.ts). */
  rule: string;
  reason: string;
  bytesUp: number;
  bytesDown: number;
  durationMs: number | null;
  state: 'open' | 'closed';
}

export type NewEntry = Omit<LedgerEntry, 'id' | 'seq' | 'bytesUp' | 'bytesDown' | 'durationMs' | 'state'>;

interface Row {
  id: number;
  seq: number;
  sandbox_id: string;
  at: number;
  protocol: 'tcp' | 'dns';
  name: string | null;
  address: string | null;
  port: number | null;
  pid: number | null;
  command: string | null;
  verdict: 'allowed' | 'refused';
  rule: string;
  reason: string;
  bytes_up: number;
  bytes_down: number;
  duration_ms: number | null;
  state: 'open' | 'closed';
}

const fromRow = (r: Row): LedgerEntry => ({
  id: r.id,
  seq: r.seq,
  sandboxId: r.sandbox_id,
  at: r.at,
  protocol: r.protocol,
  name: r.name,
  address: r.address,
  port: r.port,
  pid: r.pid,
  command: r.command,
  verdict: r.verdict,
  rule: r.rule,
  reason: r.reason,
  bytesUp: r.bytes_up,
  bytesDown: r.bytes_down,
  durationMs: r.duration_ms,
  state: r.state,
});

/** Entries kept per sandbox. */
export const MAX_ENTRIES_PER_SANDBOX = 10_000;
/** Longest wait of a follower's long poll. */
export const MAX_WAIT_MS = 30_000;

export class EgressLedger {
  private readonly sql: Statements;
  private seq: number;
  private readonly events = new EventEmitter();
  private readonly sincePrune = new Map<string, number>();

  constructor(private readonly db: Db) {
    this.sql = statementCache(db);
    this.seq = (this.sql('SELECT COALESCE(MAX(seq), 0) AS s FROM egress_log').get() as { s: number }).s;
    this.events.setMaxListeners(0);
  }

  /** Record an attempt; an allowed TCP connection stays open until `close`. */
  add(e: NewEntry, open: boolean): number {
    const seq = ++this.seq;
    const r = this.sql(
      `INSERT INTO egress_log (seq, sandbox_id, at, protocol, name, address, port, pid, command, verdict, rule, reason, bytes_up, bytes_down, duration_ms, state)
       VALUES (@seq, @sandboxId, @at, @protocol, @name, @address, @port, @pid, @command, @verdict, @rule, @reason, 0, 0, @durationMs, @state)`,
    ).run({ ...e, seq, durationMs: open ? null : 0, state: open ? 'open' : 'closed' });
    this.prune(e.sandboxId);
    this.events.emit(e.sandboxId);
    return Number(r.lastInsertRowid);
  }

  /** Finish an open entry: bytes, duration, and a verdict that changed on the way (a refused SNI). */
  close(id: number, sandboxId: string, f: { bytesUp: number; bytesDown: number; durationMs: number; verdict?: 'refused'; rule?: string; reason?: string; name?: string }): void {
    const seq = ++this.seq;
    this.sql(
      `UPDATE egress_log SET seq = @seq, bytes_up = @bytesUp, bytes_down = @bytesDown, duration_ms = @durationMs, state = 'closed',
         verdict = COALESCE(@verdict, verdict), rule = COALESCE(@rule, rule), reason = COALESCE(@reason, reason), name = COALESCE(name, @name)
       WHERE id = @id`,
    ).run({ id, seq, bytesUp: f.bytesUp, bytesDown: f.bytesDown, durationMs: Math.round(f.durationMs), verdict: f.verdict ?? null, rule: f.rule ?? null, reason: f.reason ?? null, name: f.name ?? null });
    this.events.emit(sandboxId);
  }

  list(sandboxId: string, since: number, limit: number): { entries: LedgerEntry[]; cursor: number } {
    const rows = this.sql('SELECT * FROM egress_log WHERE sandbox_id = ? AND seq > ? ORDER BY seq LIMIT ?').all(sandboxId, since, limit) as Row[];
    const entries = rows.map(fromRow);
    return { entries, cursor: entries.length ? entries[entries.length - 1]!.seq : Math.max(since, 0) };
  }

  /** Resolves when the sandbox has entries past `since`, after `ms`, or when `signal` aborts. */
  wait(sandboxId: string, since: number, ms: number, signal?: AbortSignal): Promise<void> {
    const has = () => this.sql('SELECT 1 FROM egress_log WHERE sandbox_id = ? AND seq > ? LIMIT 1').get(sandboxId, since) !== undefined;
    if (ms <= 0 || has() || signal?.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.events.removeListener(sandboxId, done);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const t = setTimeout(done, Math.min(ms, MAX_WAIT_MS));
      this.events.on(sandboxId, done);
      signal?.addEventListener('abort', done, { once: true });
    });
  }

  /** Drop what is kept in memory for sandboxes whose history is gone (src/sandboxes/history.ts). */
  forget(sandboxIds: readonly string[]): void {
    for (const id of sandboxIds) this.sincePrune.delete(id);
  }

  /** Every so many writes, drop a sandbox's entries beyond the newest MAX_ENTRIES_PER_SANDBOX. */
  private prune(sandboxId: string): void {
    const n = (this.sincePrune.get(sandboxId) ?? 0) + 1;
    this.sincePrune.set(sandboxId, n);
    if (n < 500) return;
    this.sincePrune.set(sandboxId, 0);
    const edge = this.sql('SELECT seq FROM egress_log WHERE sandbox_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?').get(sandboxId, MAX_ENTRIES_PER_SANDBOX - 1) as
      | { seq: number }
      | undefined;
    if (edge) this.sql('DELETE FROM egress_log WHERE sandbox_id = ? AND seq < ?').run(sandboxId, edge.seq);
  }
}
