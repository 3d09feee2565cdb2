/**
 * Process rows, written behind the exec path.
 *
 * A row exists for one reader: a restarted daemon re-adopting a process the
 * agent still runs, which takes its argv, cwd and start time from it. Written
 * synchronously it cost two SQLite write transactions per command, and for the
 * common short foreground command it was never read: once its exit reached the
 * daemon the agent forgets the process, so no restart can ask about it.
 *
 * So foreground rows wait in memory for up to `flushMs` and go to SQLite
 * together, one transaction per batch; a row whose process ended in the
 * meantime is never written. Background processes are written at once: they
 * are what restarts are about. A clean stop flushes (`close`). What a SIGKILL
 * of the daemon can cost: a foreground command started within `flushMs` before
 * it, and still running, is re-adopted with the argv the agent kept but no cwd,
 * and the adoption time as its start.
 */
import type { ProcessRecord, SandboxStore } from './store.js';

/** Long enough to batch a burst of execs, short enough that a restart rarely meets an unwritten row. */
const DEFAULT_FLUSH_MS = 20;

interface Ended {
  sandboxId: string;
  pid: number;
  exitCode: number;
  at: number;
}

const key = (sandboxId: string, pid: number): string => `${sandboxId}\u0000${pid}`;

export class ProcessJournal {
  /** Rows not yet written, by sandbox and pid. */
  private readonly pending = new Map<string, ProcessRecord>();
  /** Exits of processes whose row is already in SQLite. */
  private exits: Ended[] = [];
  private timer: NodeJS.Timeout | undefined;

  private readonly flushMs: number;
  private readonly onError: (err: unknown) => void;

  /** `onError` hears about a failed batch write (its rows are lost; the processes are not affected). */
  constructor(
    private readonly store: SandboxStore,
    opts: { flushMs?: number; onError?: (err: unknown) => void } = {},
  ) {
    this.flushMs = opts.flushMs ?? DEFAULT_FLUSH_MS;
    this.onError = opts.onError ?? ((err) => process.emitWarning(`process rows not written: ${String(err)}`));
  }

  /** A process started; `durable` writes its row before returning. */
  started(rec: ProcessRecord, durable: boolean): void {
    if (durable) {
      this.pending.delete(key(rec.sandboxId, rec.pid));
      this.store.insertProcess(rec);
      return;
    }
    this.pending.set(key(rec.sandboxId, rec.pid), rec);
    this.schedule();
  }

  /** `startedAt` tells this process from a later one that got the same pid. */
  ended(sandboxId: string, pid: number, startedAt: number, exitCode: number, at: number): void {
    const k = key(sandboxId, pid);
    const waiting = this.pending.get(k);
    if (waiting) {
      // Ours was never written, and a finished process needs no row (see above). A later process with the
      // reused pid keeps its waiting row, which replaces any old one when written.
      if (waiting.startedAt === startedAt) this.pending.delete(k);
      return;
    }
    this.exits.push({ sandboxId, pid, exitCode, at });
    this.schedule();
  }

  get(sandboxId: string, pid: number): ProcessRecord | undefined {
    return this.pending.get(key(sandboxId, pid)) ?? this.store.getProcess(sandboxId, pid);
  }

  /** The sandbox ended: forget its rows, written or not. */
  dropSandbox(sandboxId: string): void {
    for (const [k, rec] of this.pending) if (rec.sandboxId === sandboxId) this.pending.delete(k);
    this.exits = this.exits.filter((e) => e.sandboxId !== sandboxId);
    this.store.deleteProcesses(sandboxId);
  }

  /** Write what waits, in one transaction. */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.size === 0 && this.exits.length === 0) return;
    const rows = [...this.pending.values()];
    const exits = this.exits;
    this.pending.clear();
    this.exits = [];
    this.store.inTransaction(() => {
      for (const r of rows) this.store.insertProcess(r);
      for (const e of exits) this.store.endProcess(e.sandboxId, e.pid, e.exitCode, e.at);
    });
  }

  close(): void {
    this.flush();
  }

  private schedule(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      try {
        this.flush();
      } catch (err) {
        this.onError(err);
      }
    }, this.flushMs);
    // Pending rows must not keep a stopping process alive; close() writes them.
    this.timer.unref();
  }
}
