/**
 * Template builds as jobs, not requests. A build runs on its own: the request
 * (REST, SDK, CLI, MCP) that started it only follows it, and may go away; a
 * second request for the same template and definition joins the running
 * build and its progress. Progress and the steps' output are kept (bounded)
 * in memory for followers and appended to a bounded log file per build; the
 * job's state is a row, so it is readable by id after the daemon restarts
 * (a build cut off by a restart is marked failed).
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Db } from '../store/db.js';
import { statementCache, type Statements } from '../store/statements.js';
import { CapsuleError, ConflictError, NotFoundError } from '../errors/index.js';
import type { BuildEvent, BuildInfo } from '../schemas/templates.js';
import type { BuildReporter } from './builder.js';

/** Output kept in memory per build, for followers joining late (oldest dropped first). */
const MEMORY_LOG_BYTES = 1024 * 1024;
/** Most a build's log file grows. */
const FILE_LOG_BYTES = 16 * 1024 * 1024;
/** Finished builds kept in memory. */
const KEEP_FINISHED = 64;

interface Row {
  id: string;
  owner: string;
  name: string;
  status: BuildInfo['status'];
  step: number;
  steps: number;
  phase: string | null;
  started_at: number;
  ended_at: number | null;
  error: string | null;
}

export interface BuildJob {
  readonly id: string;
  readonly owner: string;
  readonly name: string;
  /** Same template, same definition: a second request joins. */
  readonly key: string;
  info(): BuildInfo;
  /** Resolves when the build has ended, either way (never rejects). */
  readonly done: Promise<void>;
  /** Aborted when the daemon shuts down: the build stops and fails. */
  readonly signal: AbortSignal;
}

type Listener = (ev: BuildEvent) => void;

class Job implements BuildJob, BuildReporter {
  status: BuildInfo['status'] = 'running';
  step = 0;
  phase = 'starting';
  endedAt: number | undefined;
  error: string | undefined;
  cacheHits = 0;
  readonly startedAt = Date.now();
  readonly events: Array<{ ev: BuildEvent; bytes: number }> = [];
  private kept = 0;
  private fileBytes = 0;
  readonly listeners = new Set<Listener>();
  done!: Promise<void>;
  readonly controller = new AbortController();
  readonly signal = this.controller.signal;

  constructor(
    readonly id: string,
    readonly owner: string,
    readonly name: string,
    readonly key: string,
    public steps: number,
    private readonly logFile: string,
    private readonly save: (j: Job) => void,
  ) {}

  info(): BuildInfo {
    return {
      id: this.id,
      template: this.name,
      status: this.status,
      step: this.step,
      steps: this.steps,
      phase: this.phase,
      startedAt: new Date(this.startedAt).toISOString(),
      ...(this.endedAt !== undefined ? { endedAt: new Date(this.endedAt).toISOString() } : {}),
      ...(this.error !== undefined ? { error: this.error } : {}),
      cacheHits: this.cacheHits,
    };
  }

  private emit(ev: BuildEvent): void {
    const bytes = ev.type === 'log' ? ev.data.length : 64;
    this.events.push({ ev, bytes });
    this.kept += bytes;
    // Keep the first event (where it started) and drop the oldest output after it.
    while (this.kept > MEMORY_LOG_BYTES && this.events.length > 2) this.kept -= this.events.splice(1, 1)[0]!.bytes;
    for (const l of this.listeners) {
      try {
        l(ev);
      } catch {
        /* a follower's problem is not the build's */
      }
    }
  }

  private appendFile(text: string): void {
    if (this.fileBytes >= FILE_LOG_BYTES) return;
    const room = FILE_LOG_BYTES - this.fileBytes;
    const part = text.length > room ? `${text.slice(0, room)}\n[log truncated at ${FILE_LOG_BYTES} bytes]\n` : text;
    this.fileBytes += part.length;
    try {
      fs.appendFileSync(this.logFile, part);
    } catch {
      /* the log file is a convenience; the build goes on */
    }
  }

  progress(step: number, steps: number, phase: string, cached?: boolean): void {
    this.step = step;
    // An import learns its step count (the image's layers) once it has read the archive.
    this.steps = steps;
    this.phase = phase;
    if (cached) this.cacheHits++;
    this.save(this);
    this.appendFile(`--- ${phase}\n`);
    this.emit({ type: 'progress', step, steps, phase, ...(cached ? { cached: true } : {}) });
  }

  log(step: number, data: string): void {
    this.appendFile(data);
    this.emit({ type: 'log', step, data });
  }

  finish(err: unknown): void {
    this.endedAt = Date.now();
    if (err === undefined) {
      this.status = 'succeeded';
      this.phase = 'done';
      this.save(this);
      this.emit({ type: 'done', build: this.info() });
    } else {
      this.status = 'failed';
      this.error = err instanceof Error ? err.message : String(err);
      this.phase = 'failed';
      this.save(this);
      this.appendFile(`--- failed: ${this.error}\n`);
      const code = err instanceof CapsuleError ? err.code : 'internal';
      this.emit({ type: 'error', error: { code, message: this.error }, build: this.info() });
    }
    this.listeners.clear();
  }
}

export class BuildJobs {
  private readonly sql: Statements;
  private readonly jobs = new Map<string, Job>();

  constructor(
    db: Db,
    private readonly logDir: string,
  ) {
    this.sql = statementCache(db);
  }

  /**
   * Start a build, or join the running one with the same key. `run` does the
   * work and reports through the job; its rejection fails the job.
   */
  start(owner: string, name: string, key: string, steps: number, run: (reporter: BuildReporter, job: BuildJob) => Promise<void>): BuildJob {
    for (const j of this.jobs.values()) {
      if (j.status !== 'running' || j.owner !== owner || j.name !== name) continue;
      if (j.key === key) return j;
      // Two different definitions racing for one name would leave whichever ends last: refuse the second.
      throw new ConflictError(`template ${name} is being built from another definition (build ${j.id}); wait for it to end`, { template: name, build: j.id });
    }
    fs.mkdirSync(this.logDir, { recursive: true, mode: 0o700 });
    const id = `bld_${randomBytes(8).toString('hex')}`;
    const job = new Job(id, owner, name, key, steps, path.join(this.logDir, `${id}.log`), (j) => this.save(j));
    this.sql(
      `INSERT INTO template_builds (id, owner, name, status, step, steps, phase, started_at) VALUES (?, ?, ?, 'running', 0, ?, 'starting', ?)`,
    ).run(id, owner, name, steps, job.startedAt);
    this.jobs.set(id, job);
    job.done = (async () => {
      try {
        await run(job, job);
        job.finish(undefined);
      } catch (e) {
        job.finish(e);
      }
      this.forgetOld();
    })();
    return job;
  }

  /** Stop every running build (daemon shutdown) and wait for them to clean up. */
  async close(): Promise<void> {
    const running = [...this.jobs.values()].filter((j) => j.status === 'running');
    for (const j of running) j.controller.abort(new Error('the daemon is shutting down'));
    await Promise.all(running.map((j) => j.done));
  }

  /** A build this owner may see (null: an admin, who sees all). */
  get(owner: string | null, id: string): BuildJob {
    const live = this.jobs.get(id);
    if (live && (owner === null || live.owner === owner)) return live;
    const row = this.sql('SELECT * FROM template_builds WHERE id = ?').get(id) as Row | undefined;
    if (!row || (owner !== null && row.owner !== owner)) throw new NotFoundError(`build ${id} not found`, { id });
    const info: BuildInfo = {
      id: row.id,
      template: row.name,
      status: row.status,
      step: row.step,
      steps: row.steps,
      ...(row.phase ? { phase: row.phase } : {}),
      startedAt: new Date(row.started_at).toISOString(),
      ...(row.ended_at !== null ? { endedAt: new Date(row.ended_at).toISOString() } : {}),
      ...(row.error !== null ? { error: row.error } : {}),
    };
    return { id: row.id, owner: row.owner, name: row.name, key: '', info: () => info, done: Promise.resolve(), signal: AbortSignal.abort() };
  }

  /**
   * Everything kept so far, then live events until the end. `write` returning
   * false is ignored: progress is small, and output is bounded by the build.
   */
  follow(job: BuildJob, write: (ev: BuildEvent) => void): { done: Promise<void>; stop: () => void } {
    const live = this.jobs.get(job.id);
    if (!live) {
      // From before a restart: what the row and the log file still say.
      const tail = this.logTail(job.id, 64 * 1024);
      if (tail) write({ type: 'log', step: job.info().step, data: tail });
      const info = job.info();
      write(info.status === 'failed' ? { type: 'error', error: { code: 'sandbox_error', message: info.error ?? 'the build failed' }, build: info } : { type: 'done', build: info });
      return { done: Promise.resolve(), stop: () => undefined };
    }
    for (const { ev } of live.events) write(ev);
    if (live.status !== 'running') return { done: Promise.resolve(), stop: () => undefined };
    live.listeners.add(write);
    return { done: live.done, stop: () => live.listeners.delete(write) };
  }

  /** The end of a build's log file ('' when there is none). */
  logTail(id: string, bytes: number): string {
    try {
      const f = path.join(this.logDir, `${id}.log`);
      const size = fs.statSync(f).size;
      const fd = fs.openSync(f, 'r');
      try {
        const len = Math.min(bytes, size);
        const buf = Buffer.alloc(len);
        fs.readSync(fd, buf, 0, len, size - len);
        return buf.toString('utf8');
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      return '';
    }
  }

  /** At start: builds that were running when the daemon stopped failed. */
  recover(): number {
    return this.sql(
      `UPDATE template_builds SET status = 'failed', ended_at = ?, error = 'interrupted by a daemon restart; build it again' WHERE status = 'running'`,
    ).run(Date.now()).changes;
  }

  /**
   * History retention (src/sandboxes/history.ts runs it): finished builds that ended before `before` go
   * with their log files, except each template's latest build (its info names it). Returns how many went.
   */
  purgeFinished(before: number): number {
    const rows = this.sql(
      `SELECT id FROM template_builds WHERE status != 'running' AND ended_at IS NOT NULL AND ended_at < ?
         AND id NOT IN (SELECT build_id FROM user_templates WHERE build_id IS NOT NULL)`,
    ).all(before) as Array<{ id: string }>;
    for (const { id } of rows) {
      this.sql('DELETE FROM template_builds WHERE id = ?').run(id);
      this.jobs.delete(id);
      fs.rmSync(path.join(this.logDir, `${id}.log`), { force: true });
    }
    return rows.length;
  }

  private save(j: Job): void {
    this.sql('UPDATE template_builds SET status = ?, step = ?, steps = ?, phase = ?, ended_at = ?, error = ? WHERE id = ?').run(
      j.status,
      j.step,
      j.steps,
      j.phase,
      j.endedAt ?? null,
      j.error ?? null,
      j.id,
    );
  }

  private forgetOld(): void {
    const finished = [...this.jobs.values()].filter((j) => j.status !== 'running');
    for (const j of finished.slice(0, Math.max(0, finished.length - KEEP_FINISHED))) this.jobs.delete(j.id);
  }
}
