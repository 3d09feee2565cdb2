/**
 * Commands inside sandboxes: foreground runs (buffered or streamed), background
 * processes with bounded output, stdin, signals, waiting, and re-attaching to
 * processes that were started before a daemon restart. Terminals (pty.ts) are
 * processes too: started through `start`, listed, followed, fed and killed here.
 * A process may carry a tag, unique among the sandbox's running processes, and
 * every call that names a process takes its pid or its tag.
 *
 * Output stays bytes here; each consumer encodes it for its own wire
 * (output.ts), so no view decodes a chunk on its own.
 */
import type { AgentConnection, AgentProcess, ExitStatus, StreamSpec } from '../agent/types.js';
import type { CommandResult, ProcessInfo, RunCommandRequest } from '../schemas/commands.js';
import { LIMITS } from '../schemas/common.js';
import type { RequestContext } from '../auth/context.js';
import { ConflictError, InvalidArgumentError, NotFoundError, RateLimitedError, TimeoutError } from '../errors/index.js';
import { BoundedOutput, TailBuffer, type OutputEncoding, type ProcessEvent } from './output.js';
import { NO_TELEMETRY, type Telemetry } from './telemetry.js';
import type { SandboxManager, SandboxEvents } from './manager.js';
import type { ProcessJournal } from './process-journal.js';
import type { SandboxEvent, SandboxEventSink } from './events.js';
import { buildEnv, resolveSandboxPath } from './paths.js';

/**
 * Where streamed events go. `write` returns false when the consumer is full
 * (e.g. a slow HTTP client); the process is then paused until `drained()`.
 */
export interface EventSink {
  write(ev: ProcessEvent): boolean;
  drained(): Promise<void>;
}

/**
 * What `run` needs of a cancellation signal: an AbortSignal (REST), or something as small that behaves
 * like one (the command channel makes one per run, where an AbortController and its EventTarget were a
 * measurable part of the exec path).
 */
export interface CancelSignal {
  addEventListener(type: 'abort', listener: () => void, opts: { once: true }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/** A pid, or the tag of a running process (else of the latest finished one with it). */
export type ProcessSelector = number | string;

/** A process to start through `start` (terminals): what the agent gets, and how the daemon tracks it. */
export interface StartSpec {
  argv: string[];
  env: Record<string, string>;
  cwd?: string | undefined;
  user?: string | undefined;
  /** The agent's stream table; a `pty` stream makes it a terminal, fed through that stream. */
  streams: StreamSpec[];
  tag?: string | undefined;
  timeoutMs?: number | undefined;
}

interface Tracked {
  sandboxId: string;
  pid: number;
  argv: string[];
  cwd: string | undefined;
  tag: string | undefined;
  /** A terminal: its output is `stdout`, and input goes to stream `inputStream`. */
  pty: boolean;
  inputStream: number;
  startedAt: number;
  stdout: BoundedOutput;
  stderr: BoundedOutput;
  /** The newest output, replayed to a client that connects later (REPLAY_BYTES per stream). */
  recent: { stdout: TailBuffer; stderr: TailBuffer };
  proc: AgentProcess | undefined;
  timedOut: boolean;
  /** OOM kills in the sandbox's cgroup when the command started (read while it starts); more at a SIGKILL exit means it was OOM-killed. */
  oomBefore: number | Promise<number>;
  oomKilled: boolean;
  exit: ExitStatus | undefined;
  done: Promise<ExitStatus>;
  finish: (s: ExitStatus) => void;
  followers: Set<EventSink>;
  /** Followers that asked to slow down; the process is paused while any is full. */
  throttledBy: Set<EventSink>;
  timer: NodeJS.Timeout | undefined;
  /** Its agent connection was let go on purpose (hibernate): losing it is no exit; a restore re-attaches it. */
  detached?: boolean;
}

/** Finished processes remembered per sandbox for list/wait; older ones are forgotten. */
const MAX_FINISHED_PER_SANDBOX = 256;
const MAX_LIVE_PER_SANDBOX = 1024;

export class CommandService implements SandboxEvents {
  private readonly bySandbox = new Map<string, ProcessTable>();

  constructor(
    private readonly sandboxes: SandboxManager,
    private readonly journal: ProcessJournal,
    private readonly telemetry: Telemetry = NO_TELEMETRY,
    /** The sandbox log (src/sandboxes/events.ts): commands started and ended. */
    private readonly log?: SandboxEventSink,
  ) {
    sandboxes.setEvents(this);
  }

  /**
   * Start a command. Foreground: resolves with the result when it exits.
   * Background: resolves with the pid at once. `sink` receives every event as
   * it happens (used for streamed responses).
   */
  async run(
    ctx: RequestContext,
    sandboxId: string,
    req: RunCommandRequest,
    opts: { sink?: EventSink; signal?: CancelSignal } = {},
  ): Promise<CommandResult | { pid: number }> {
    // A caller waiting on a foreground command is not idle: its sandbox's idle policy must not pause it meanwhile.
    // One async function between the exit and the caller, not two (ADR 0016).
    const release = req.background === true ? undefined : this.sandboxes.hold(sandboxId);
    try {
      const t0 = performance.now();
      const argv = typeof req.cmd === 'string' ? ['/bin/sh', '-c', req.cmd] : req.cmd;
      const { rec: sb, conn } = this.sandboxes.useNow(ctx, sandboxId) ?? (await this.sandboxes.use(ctx, sandboxId, 'run a command'));
      // The template's workdir and user apply to commands that name none.
      const cwdAsked = req.cwd ?? sb.defaults.cwd;
      const cwd = cwdAsked === undefined ? undefined : resolveSandboxPath(cwdAsked);
      const user = req.user ?? sb.defaults.user;
      const table = this.table(sandboxId);
      if (table.running >= MAX_LIVE_PER_SANDBOX) {
        throw new RateLimitedError(`sandbox ${sandboxId} already runs ${MAX_LIVE_PER_SANDBOX} commands`);
      }
      const releaseTag = this.reserveTag(sandboxId, table, req.tag);
      // Made before the EXEC leaves and attached inside the agent's reply (onStart): a short command's
      // reply, output and exit come in one read and are handled in that turn, with as little as possible
      // left to do between the reply and the answer (ADR 0016).
      const background = req.background === true;
      const t = this.tracked(sandboxId, argv, cwd, req.maxOutputBytes ?? LIMITS.defaultOutputBytes, Date.now(), { tag: req.tag });
      const started = conn.exec({
        argv,
        env: buildEnv(sb.envs, req.envs, user),
        ...(cwd !== undefined ? { cwd } : {}),
        ...(user !== undefined ? { user } : {}),
        stdin: background || req.stdin !== undefined,
        // A foreground run waits for the exit anyway; a streamed one may see its start up to 2 ms later.
        holdReply: !background,
        onStart: (p) => {
          this.register(t, p.pid, background);
          if (opts.sink) t.followers.add(opts.sink);
          opts.sink?.write({ type: 'start', pid: p.pid });
          this.bind(t, p);
        },
      });
      // The EXEC frame is on its way: the OOM counter is read while the agent forks (needed only at a SIGKILL).
      t.oomBefore = this.sandboxes.oomKills(sandboxId);
      let proc: AgentProcess;
      try {
        proc = await started;
      } finally {
        releaseTag();
      }

      const timeoutMs = req.timeoutMs ?? (background ? 0 : LIMITS.defaultCommandTimeoutMs);
      // A short command may have ended already, inside the reply: no timer, no cancel hook.
      if (timeoutMs > 0 && !t.exit) {
        t.timer = setTimeout(() => {
          t.timedOut = true;
          void proc.signal('SIGKILL').catch(() => undefined);
        }, timeoutMs);
      }
      if (req.stdin !== undefined) {
        try {
          await proc.writeStdin(Buffer.from(req.stdin, 'utf8'));
          if (!background) await proc.closeStdin();
        } catch (err) {
          // Ended before it read its input (its exit may come with the reply, see onStart): its result stands.
          if (!(await hasSettled(proc.exited))) throw err;
        }
      }
      if (background) {
        this.telemetry.commandRan((performance.now() - t0) / 1000, 'background');
        return { pid: proc.pid };
      }

      if (!t.exit) {
        const onAbort = () => void proc.signal('SIGKILL').catch(() => undefined);
        opts.signal?.addEventListener('abort', onAbort, { once: true });
        try {
          await t.done;
        } finally {
          opts.signal?.removeEventListener('abort', onAbort);
        }
      }
      if (opts.sink) this.unfollow(t, opts.sink);
      // Recorded after the answer is on its way: not part of the round trip it measures.
      const seconds = (performance.now() - t0) / 1000;
      setImmediate(() => this.telemetry.commandRan(seconds, 'foreground'));
      return this.result(t, req.encoding ?? 'utf8');
    } finally {
      release?.();
    }
  }

  /**
   * Start a process with its own stream table (a terminal) and track it like a background command:
   * it keeps running without a client, and is listed, followed, fed and killed here. Resolves with its pid.
   */
  async start(ctx: RequestContext, sandboxId: string, spec: StartSpec, what: string): Promise<{ pid: number }> {
    const { conn } = await this.sandboxes.use(ctx, sandboxId, what);
    const table = this.table(sandboxId);
    if (table.running >= MAX_LIVE_PER_SANDBOX) {
      throw new RateLimitedError(`sandbox ${sandboxId} already runs ${MAX_LIVE_PER_SANDBOX} processes`);
    }
    const releaseTag = this.reserveTag(sandboxId, table, spec.tag);
    let proc: AgentProcess;
    try {
      proc = await conn.exec({
        argv: spec.argv,
        env: spec.env,
        ...(spec.cwd !== undefined ? { cwd: spec.cwd } : {}),
        ...(spec.user !== undefined ? { user: spec.user } : {}),
        stdin: false,
        streams: spec.streams,
      });
    } finally {
      releaseTag();
    }
    const t = this.track(sandboxId, proc.pid, spec.argv, spec.cwd, LIMITS.defaultOutputBytes, true, undefined, { tag: spec.tag });
    this.bind(t, proc);
    if (spec.timeoutMs) {
      t.timer = setTimeout(() => {
        t.timedOut = true;
        void proc.signal('SIGKILL').catch(() => undefined);
      }, spec.timeoutMs);
    }
    return { pid: proc.pid };
  }

  list(ctx: RequestContext, sandboxId: string, filter: { tag?: string | undefined } = {}): ProcessInfo[] {
    this.sandboxes.get(ctx, sandboxId);
    return [...this.table(sandboxId).procs.values()]
      .filter((t) => filter.tag === undefined || t.tag === filter.tag)
      .map((t) => ({
        pid: t.pid,
        cmd: t.argv,
        ...(t.cwd !== undefined ? { cwd: t.cwd } : {}),
        ...(t.tag !== undefined ? { tag: t.tag } : {}),
        ...(t.pty ? { pty: true } : {}),
        startedAt: new Date(t.startedAt).toISOString(),
        running: !t.exit,
        ...(t.exit ? { exitCode: t.exit.exitCode } : {}),
      }));
  }

  /** Write to a process's stdin (a terminal's keystrokes); `eof` closes a pipe (a terminal has no end of input). */
  async sendStdin(ctx: RequestContext, sandboxId: string, sel: ProcessSelector, data: Buffer, eof: boolean): Promise<void> {
    // Through use(): a frozen agent reads nothing, so a paused sandbox answers 409 (or wakes, with autoResume).
    await this.sandboxes.use(ctx, sandboxId, 'send input');
    const t = this.live(ctx, sandboxId, sel);
    if (!t.proc) throw new NotFoundError(`process ${t.pid} has no stdin`);
    if (data.length > 0) await t.proc.writeStream(t.inputStream, data);
    if (eof && !t.pty) await t.proc.closeStdin();
  }

  async signal(ctx: RequestContext, sandboxId: string, sel: ProcessSelector, signal: NodeJS.Signals): Promise<void> {
    await this.sandboxes.use(ctx, sandboxId, 'signal a process');
    const t = this.live(ctx, sandboxId, sel);
    await t.proc?.signal(signal);
  }

  /** New window size of a terminal; the program in it gets SIGWINCH. */
  async resize(ctx: RequestContext, sandboxId: string, sel: ProcessSelector, size: { cols: number; rows: number }): Promise<void> {
    const t = this.live(ctx, sandboxId, sel);
    if (!t.pty) throw new InvalidArgumentError(`process ${t.pid} is not a terminal`, { pid: t.pid });
    await t.proc?.resize(size.rows, size.cols);
  }

  /** Which process a selector names (its pid), and whether it is a terminal; for transports that hold a connection. */
  resolve(ctx: RequestContext, sandboxId: string, sel: ProcessSelector): { pid: number; pty: boolean; running: boolean } {
    const t = this.find(ctx, sandboxId, sel);
    return { pid: t.pid, pty: t.pty, running: !t.exit };
  }

  /** Waits for exit; `timeoutMs` bounds the wait, not the process. */
  async wait(ctx: RequestContext, sandboxId: string, sel: ProcessSelector, opts: { timeoutMs?: number | undefined; encoding?: OutputEncoding | undefined } = {}): Promise<CommandResult> {
    const t = this.find(ctx, sandboxId, sel);
    const pid = t.pid;
    const timeoutMs = opts.timeoutMs;
    if (!t.exit) {
      let timer: NodeJS.Timeout | undefined;
      const limit = timeoutMs ?? 0;
      const timedOut =
        limit > 0
          ? new Promise<'timeout'>((resolve) => {
              timer = setTimeout(() => resolve('timeout'), limit);
            })
          : undefined;
      const r = await (timedOut ? Promise.race([t.done, timedOut]) : t.done);
      if (timer) clearTimeout(timer);
      if (r === 'timeout') throw new TimeoutError(`process ${pid} still running after ${limit} ms`, { pid });
    }
    return this.result(t, opts.encoding ?? 'utf8');
  }

  /**
   * Replays the recent output (at most REPLAY_BYTES per stream, output.ts), then follows live output
   * until exit. When the process wrote no more than that, the replay and the live output are its whole
   * output as one contiguous byte stream.
   */
  follow(ctx: RequestContext, sandboxId: string, sel: ProcessSelector, sink: EventSink): { pid: number; pty: boolean; replayBytes: number; done: Promise<void>; stop: () => void } {
    const t = this.find(ctx, sandboxId, sel);
    const pid = t.pid;
    sink.write({ type: 'start', pid });
    const out = t.recent.stdout.bytes();
    const err = t.recent.stderr.bytes();
    if (out.length) sink.write({ type: 'stdout', data: out });
    if (err.length) sink.write({ type: 'stderr', data: err });
    const replayBytes = out.length + err.length;
    if (t.exit) {
      sink.write(exitEvent(t));
      return { pid, pty: t.pty, replayBytes, done: Promise.resolve(), stop: () => undefined };
    }
    t.followers.add(sink);
    // A follower waits on the sandbox: it is not idle meanwhile.
    const release = this.sandboxes.hold(sandboxId);
    return {
      pid,
      pty: t.pty,
      replayBytes,
      done: t.done.then(() => undefined).finally(release),
      stop: () => {
        release();
        this.unfollow(t, sink);
      },
    };
  }

  // --- SandboxEvents -------------------------------------------------------

  onEnded(id: string): void {
    const table = this.bySandbox.get(id);
    if (!table) return;
    for (const t of table.procs.values()) {
      if (!t.exit) t.finish({ exitCode: 137, signal: 'SIGKILL' });
    }
    this.bySandbox.delete(id);
    this.journal.dropSandbox(id);
  }

  /**
   * The sandbox is about to hibernate: its agent connection closes but every process lives on (on disk,
   * then restored). Keep following them; onAdopted re-attaches them after the restore (the agent replays
   * its last 64 KiB of each output, so a follower may see some of it twice).
   */
  onDetached(id: string): void {
    const table = this.bySandbox.get(id);
    if (!table) return;
    for (const t of table.procs.values()) if (!t.exit) t.detached = true;
  }

  async onAdopted(id: string, conn: AgentConnection): Promise<void> {
    // Finished-but-uncollected processes too: one may have exited while the daemon was down.
    const known = await conn.listProcesses({ includeExited: true });
    for (const p of known) {
      const had = this.table(id).procs.get(p.pid);
      if (had?.detached && !had.exit) {
        try {
          const proc = await conn.attach(p.pid);
          had.detached = false;
          this.bind(had, proc);
        } catch {
          had.detached = false;
          had.finish({ exitCode: p.exitCode ?? -1 });
        }
        continue;
      }
      if (had) continue;
      const rec = this.journal.get(id, p.pid);
      try {
        // Attaching replays the output the agent kept (its last 64 KiB), then the exit.
        const proc = await conn.attach(p.pid);
        const t = this.track(id, p.pid, rec?.argv ?? p.argv, rec?.cwd ?? undefined, LIMITS.defaultOutputBytes, true, rec?.startedAt, { tag: rec?.tag ?? undefined, adopted: true });
        this.bind(t, proc);
      } catch {
        if (p.exited) {
          const t = this.track(id, p.pid, rec?.argv ?? p.argv, rec?.cwd ?? undefined, LIMITS.defaultOutputBytes, true, rec?.startedAt, { adopted: true });
          t.finish({ exitCode: p.exitCode ?? -1 });
        }
      }
    }
  }

  // --- internals -----------------------------------------------------------

  private table(sandboxId: string): ProcessTable {
    let m = this.bySandbox.get(sandboxId);
    if (!m) {
      m = { procs: new Map(), running: 0, finished: 0, startingTags: new Set() };
      this.bySandbox.set(sandboxId, m);
    }
    return m;
  }

  /** `durable`: the row must be in SQLite before this returns (background processes; see ProcessJournal). */
  private track(
    sandboxId: string,
    pid: number,
    argv: string[],
    cwd: string | undefined,
    limit: number,
    durable: boolean,
    startedAt = Date.now(),
    extra: { tag?: string | undefined; adopted?: boolean } = {},
  ): Tracked {
    const t = this.tracked(sandboxId, argv, cwd, limit, startedAt, extra);
    this.register(t, pid, durable, extra.adopted);
    return t;
  }

  /** A process's record before its pid is known (nothing is listed, journaled or logged yet: see register). */
  private tracked(
    sandboxId: string,
    argv: string[],
    cwd: string | undefined,
    limit: number,
    startedAt: number,
    extra: { tag?: string | undefined },
  ): Tracked {
    let finish!: (s: ExitStatus) => void;
    const done = new Promise<ExitStatus>((resolve) => {
      finish = resolve;
    });
    const t: Tracked = {
      sandboxId,
      pid: 0,
      argv,
      cwd,
      tag: extra.tag,
      pty: false,
      inputStream: 0,
      startedAt,
      stdout: new BoundedOutput(limit),
      stderr: new BoundedOutput(limit),
      recent: { stdout: new TailBuffer(), stderr: new TailBuffer() },
      proc: undefined,
      timedOut: false,
      oomBefore: 0,
      oomKilled: false,
      exit: undefined,
      done,
      finish: (s) => {
        if (t.exit) return;
        t.exit = s;
        if (t.timer) clearTimeout(t.timer);
        for (const f of t.followers) f.write(exitEvent(t));
        t.followers.clear();
        t.throttledBy.clear();
        finish(s);
        const table = this.bySandbox.get(sandboxId);
        if (table?.procs.get(t.pid) === t) {
          table.running--;
          table.finished++;
        }
        this.journal.ended(sandboxId, t.pid, startedAt, s.exitCode, Date.now());
        this.logEnd(t, s);
        this.forgetOldFinished(sandboxId);
      },
      followers: new Set(),
      throttledBy: new Set(),
      timer: undefined,
    };
    return t;
  }

  /** The process started as `pid`: listed in its sandbox's table, journaled and logged. */
  private register(t: Tracked, pid: number, durable: boolean, adopted?: boolean): void {
    t.pid = pid;
    const { sandboxId, argv, cwd, tag, startedAt } = t;
    const table = this.table(sandboxId);
    const old = table.procs.get(pid);
    if (old) {
      // A reused pid replaces an old entry (the agent never reuses a pid it still tracks).
      if (old.exit) table.finished--;
      else table.running--;
      table.procs.delete(pid);
    }
    table.procs.set(pid, t);
    table.running++;
    this.journal.started({ sandboxId, pid, argv, cwd: cwd ?? null, tag: tag ?? null, startedAt, endedAt: null, exitCode: null }, durable);
    this.log?.record(sandboxId, () => {
      const cmd = commandLine(argv);
      return {
        level: 'info',
        event: 'command.start',
        message: `${adopted ? 'following' : 'started'} pid ${pid}: ${cmd}`,
        fields: { pid, cmd, tag, background: durable, adopted },
      };
    });
  }

  private logEnd(t: Tracked, s: ExitStatus): void {
    if (!this.log) return;
    // What the entry says is taken now; its text is made when the log writes its batch.
    const { pid, oomKilled, timedOut } = t;
    const durationMs = Date.now() - t.startedAt;
    this.log.record(t.sandboxId, () => endEntry(pid, s, oomKilled, timedOut, durationMs));
  }

  private bind(t: Tracked, proc: AgentProcess): void {
    t.proc = proc;
    const deliver = (type: 'stdout' | 'stderr', chunk: Buffer) => {
      t[type].push(chunk);
      t.recent[type].push(chunk);
      if (!t.followers.size) return;
      const ev: ProcessEvent = { type, data: chunk };
      for (const f of t.followers) if (!f.write(ev)) this.throttle(t, f);
    };
    // A terminal's one stream is its output and its input; the agent reports it on ATTACH too (after a restart).
    const pty = proc.streams.find((s) => s.kind === 'pty');
    if (pty) {
      t.pty = true;
      t.inputStream = pty.id;
      // Stream 1 already arrives as stdout; a terminal on another id is its output all the same.
      if (pty.id !== 1) proc.on('data', (stream, chunk) => stream === pty.id && deliver('stdout', chunk));
    }
    proc.on('stdout', (chunk) => deliver('stdout', chunk));
    proc.on('stderr', (chunk) => deliver('stderr', chunk));
    // Finished in the turn the exit arrives (no promise hop): a short command's reply, output and exit come in
    // one read, so its run answers from that turn, with no timeout timer made and cleared (ADR 0016).
    proc.on('exit', (s) => {
      if ((s.signal !== 'SIGKILL' && s.exitCode !== 137) || t.timedOut) return t.finish(s);
      // Killed: by the OOM killer if the sandbox's OOM count rose while it ran.
      void Promise.all([this.sandboxes.oomKills(t.sandboxId), t.oomBefore]).then(
        ([after, before]) => {
          t.oomKilled = after > before;
          t.finish(s);
        },
        () => t.finish(s),
      );
    });
    // The connection died under a running process: the sandbox is most likely gone (unless it hibernates).
    proc.exited.catch(() => {
      if (t.proc === proc && !t.detached) t.finish({ exitCode: 137, signal: 'SIGKILL' });
    });
  }

  /** A follower is full: hold the process's output in the agent (its pipe fills, it blocks) until it drains. */
  private throttle(t: Tracked, f: EventSink): void {
    if (t.throttledBy.has(f)) return;
    t.throttledBy.add(f);
    t.proc?.pause();
    void f.drained().then(() => this.unthrottle(t, f));
  }

  private unthrottle(t: Tracked, f: EventSink): void {
    if (!t.throttledBy.delete(f)) return;
    if (t.throttledBy.size === 0) t.proc?.resume();
  }

  private unfollow(t: Tracked, f: EventSink): void {
    t.followers.delete(f);
    this.unthrottle(t, f);
  }

  private result(t: Tracked, encoding: OutputEncoding): CommandResult {
    const exit = t.exit ?? { exitCode: -1 };
    return {
      pid: t.pid,
      exitCode: exit.exitCode,
      ...(exit.signal ? { signal: exit.signal } : {}),
      stdout: t.stdout.encode(encoding),
      stderr: t.stderr.encode(encoding),
      ...(encoding === 'base64' ? { encoding } : {}),
      ...(t.stdout.truncated ? { stdoutTruncated: true } : {}),
      ...(t.stderr.truncated ? { stderrTruncated: true } : {}),
      ...(t.timedOut ? { timedOut: true } : {}),
      ...(t.oomKilled ? { oomKilled: true } : {}),
    };
  }

  private find(ctx: RequestContext, sandboxId: string, sel: ProcessSelector): Tracked {
    this.sandboxes.get(ctx, sandboxId);
    const procs = this.bySandbox.get(sandboxId)?.procs;
    if (typeof sel === 'number') {
      const t = procs?.get(sel);
      if (!t) throw new NotFoundError(`no process ${sel} in sandbox ${sandboxId}`, { pid: sel });
      return t;
    }
    // The running one (tags are unique among those), else the one that finished last.
    let found: Tracked | undefined;
    for (const t of procs?.values() ?? []) {
      if (t.tag !== sel) continue;
      if (!t.exit) return t;
      found = t;
    }
    if (!found) throw new NotFoundError(`no process tagged ${sel} in sandbox ${sandboxId}`, { tag: sel });
    return found;
  }

  private live(ctx: RequestContext, sandboxId: string, sel: ProcessSelector): Tracked {
    const t = this.find(ctx, sandboxId, sel);
    if (t.exit) throw new InvalidArgumentError(`process ${t.pid} has already exited (code ${t.exit.exitCode})`, { pid: t.pid });
    return t;
  }

  /**
   * Holds a tag for a process being started: a second start with it, or one while a process that has it
   * runs, is a conflict. Returns the release, called once the process is tracked (or failed to start).
   */
  private reserveTag(sandboxId: string, table: ProcessTable, tag: string | undefined): () => void {
    if (tag === undefined) return () => undefined;
    const holder = [...table.procs.values()].find((t) => t.tag === tag && !t.exit);
    if (holder || table.startingTags.has(tag)) {
      throw new ConflictError(`sandbox ${sandboxId} already runs a process tagged ${tag}${holder ? ` (pid ${holder.pid})` : ''}`, { tag, ...(holder ? { pid: holder.pid } : {}) });
    }
    table.startingTags.add(tag);
    return () => table.startingTags.delete(tag);
  }

  private forgetOldFinished(sandboxId: string): void {
    const table = this.bySandbox.get(sandboxId);
    if (!table) return;
    // Map order is insertion order, so the first finished ones are the oldest; counters keep this O(1) per exit.
    for (const t of table.procs.values()) {
      if (table.finished <= MAX_FINISHED_PER_SANDBOX) break;
      if (t.exit) {
        table.procs.delete(t.pid);
        table.finished--;
      }
    }
  }
}

/** A sandbox's processes, with counts kept as they change (checked on every exec). */
interface ProcessTable {
  procs: Map<number, Tracked>;
  running: number;
  finished: number;
  /** Tags of processes being started (not tracked yet). */
  startingTags: Set<string>;
}

function exitEvent(t: Tracked): ProcessEvent {
  return {
    type: 'exit',
    exitCode: t.exit?.exitCode ?? -1,
    ...(t.exit?.signal ? { signal: t.exit.signal } : {}),
    ...(t.timedOut ? { timedOut: true } : {}),
    ...(t.oomKilled ? { oomKilled: true } : {}),
  };
}

/** Whether `p` is already settled: its callbacks are queued ahead of one queued after them. */
function hasSettled(p: Promise<unknown>): Promise<boolean> {
  return Promise.race([p.then(() => true, () => true), Promise.resolve().then(() => false)]);
}

/** The sandbox log's `command.end` entry. */
function endEntry(pid: number, s: ExitStatus, oomKilled: boolean, timedOut: boolean, durationMs: number): SandboxEvent {
  const how = oomKilled
    ? `killed by ${s.signal ?? 'SIGKILL'}: out of memory (the OOM killer)`
    : timedOut
      ? `timed out and was killed${s.signal ? ` (${s.signal})` : ''}`
      : s.signal
        ? `killed by ${s.signal}`
        : `exited with code ${s.exitCode}`;
  return {
    level: oomKilled || timedOut || s.signal !== undefined ? 'warn' : 'info',
    event: 'command.end',
    message: `pid ${pid} ${how}`,
    fields: { pid, exitCode: s.exitCode, signal: s.signal, oomKilled: oomKilled || undefined, timedOut: timedOut || undefined, durationMs },
  };
}

/** A command as one short line for the sandbox log (`sh -c <script>` shows the script). */
function commandLine(argv: string[]): string {
  const shown = argv.length === 3 && /(^|\/)(ba)?sh$/.test(argv[0]!) && argv[1] === '-c' ? argv[2]! : argv.join(' ');
  return shown.length > 200 ? `${shown.slice(0, 199)}…` : shown;
}
