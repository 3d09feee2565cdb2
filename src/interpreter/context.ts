/**
 * One code context: a driver process in the sandbox that keeps an
 * interpreter's state, and the cells run in it, one at a time.
 *
 * A cell is a request line on the driver's request stream; what it produces
 * comes back as events on the driver's event stream (wire.ts) and is gathered
 * into a RunCodeResult and, when the caller streams, forwarded as CodeEvents.
 * Interrupts: SIGINT to the driver's process group first (the interpreter
 * stops the cell and keeps its state); if no `end` follows within the grace
 * period, SIGKILL and a fresh driver (state lost), and the result says which.
 */
import type { AgentProcess, ExitStatus } from '../agent/types.js';
import { NotFoundError, SandboxError, UnsupportedError, isCapsuleError } from '../errors/index.js';
import { CODE_LIMITS, type CodeContext, type CodeEvent, type CodeLanguage, type CodeResult, type ExecutionError, type RunCodeResult } from '../schemas/code.js';
import { BoundedOutput } from '../sandboxes/output.js';
import { DRIVER_STREAMS, runtimeOf } from './drivers.js';
import { LineSplitter, parseEvent, resultSize, toCodeResult, toExecutionError, type DriverEvent } from './wire.js';

/** Where a run's events go as they happen; `write` false: hold the driver's output until `drained`. */
export interface CodeSink {
  write(ev: CodeEvent): boolean;
  drained(): Promise<void>;
}

export interface RunOptions {
  code: string;
  envs?: Record<string, string> | undefined;
  timeoutMs: number;
  maxOutputBytes: number;
  sink?: CodeSink | undefined;
  signal?: AbortSignal | undefined;
}

export interface ContextOptions {
  id: string;
  language: CodeLanguage;
  cwd?: string | undefined;
  user?: string | undefined;
  isDefault: boolean;
  /** Starts a driver process for this context (installing the drivers first when needed). */
  spawn: () => Promise<AgentProcess>;
  /** How long SIGINT may take before the driver is killed and restarted. */
  interruptGraceMs?: number;
  /** How long a driver may take to say it is ready (loading IPython or TypeScript on a busy machine). */
  startTimeoutMs?: number;
}

export const INTERRUPT_GRACE_MS = 2000;
const START_TIMEOUT_MS = 60_000;
/** Bytes of a driver's diagnostics kept for error messages. */
const DIAG_TAIL = 8 * 1024;

type Interrupt = NonNullable<RunCodeResult['interrupted']>;

class Run {
  readonly id: string;
  readonly started = performance.now();
  readonly stdout: BoundedOutput;
  readonly stderr: BoundedOutput;
  readonly results: CodeResult[] = [];
  resultBytes = 0;
  dropped = 0;
  error: ExecutionError | undefined;
  interrupted: Interrupt | undefined;
  restarted = false;
  executionCount: number | undefined;
  ended = false;
  durationMs = 0;
  readonly done: Promise<void>;
  private resolve!: () => void;

  constructor(
    seq: number,
    maxOutputBytes: number,
    readonly sink: CodeSink | undefined,
  ) {
    this.id = `r${seq}`;
    this.stdout = new BoundedOutput(maxOutputBytes);
    this.stderr = new BoundedOutput(maxOutputBytes);
    this.done = new Promise((r) => (this.resolve = r));
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.durationMs = Math.round((performance.now() - this.started) * 1000) / 1000;
    this.resolve();
  }
}

export class LiveContext {
  readonly createdAt = new Date();
  executionCount = 0;
  restarts = 0;
  private proc: AgentProcess | undefined;
  private starting: Promise<void> | undefined;
  private everStarted = false;
  /** The driver died between runs: the next run says its state is gone. */
  private lostState = false;
  private queue: Promise<unknown> = Promise.resolve();
  private waiting = 0;
  private run: Run | undefined;
  private seq = 0;
  private closed = false;
  private diag = Buffer.alloc(0);
  private readonly graceMs: number;
  private readonly startTimeoutMs: number;

  constructor(private readonly opts: ContextOptions) {
    this.graceMs = opts.interruptGraceMs ?? INTERRUPT_GRACE_MS;
    this.startTimeoutMs = opts.startTimeoutMs ?? START_TIMEOUT_MS;
  }

  get id(): string {
    return this.opts.id;
  }
  get language(): CodeLanguage {
    return this.opts.language;
  }
  get isDefault(): boolean {
    return this.opts.isDefault;
  }
  get isClosed(): boolean {
    return this.closed;
  }

  info(): CodeContext {
    return {
      id: this.id,
      language: this.language,
      ...(this.opts.cwd !== undefined ? { cwd: this.opts.cwd } : {}),
      ...(this.opts.user !== undefined ? { user: this.opts.user } : {}),
      createdAt: this.createdAt.toISOString(),
      default: this.isDefault,
      busy: this.run !== undefined,
      executionCount: this.executionCount,
      restarts: this.restarts,
    };
  }

  /** Starts the driver (first use) and waits until it is ready. */
  async start(): Promise<void> {
    await this.ensureStarted();
  }

  /** Runs one cell after the cells queued before it. */
  execute(opts: RunOptions): Promise<RunCodeResult> {
    this.waiting++;
    const turn = this.queue.then(() => {
      this.waiting--;
      return this.runCell(opts);
    });
    this.queue = turn.catch(() => undefined);
    return turn;
  }

  /** Kills the driver and starts a fresh one: every variable is gone. A running cell ends as restarted. */
  async restart(): Promise<void> {
    this.assertOpen();
    const run = this.run;
    if (run) run.interrupted ??= { reason: 'cancelled', how: 'restart' };
    await this.killDriver();
    this.executionCount = 0;
    this.lostState = false;
    await this.ensureStarted();
  }

  /** Ends the context: the driver and everything it started are killed. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.killDriver();
  }

  // --- the driver process ---------------------------------------------------------------

  private assertOpen(): void {
    if (this.closed) throw new NotFoundError(`code context ${this.id} was removed`, { contextId: this.id });
  }

  private async ensureStarted(): Promise<boolean> {
    if (this.starting) await this.starting.catch(() => undefined);
    if (this.proc) return false;
    this.assertOpen();
    const p = this.startDriver();
    this.starting = p;
    try {
      await p;
    } finally {
      if (this.starting === p) this.starting = undefined;
    }
    return true;
  }

  private async startDriver(): Promise<void> {
    const proc = await this.opts.spawn().catch((e: unknown) => {
      throw this.spawnError(e);
    });
    if (this.everStarted) this.restarts++;
    this.everStarted = true;
    this.diag = Buffer.alloc(0);
    let ready!: () => void;
    let failed!: (e: Error) => void;
    const readyP = new Promise<void>((res, rej) => {
      ready = res;
      failed = rej;
    });
    let isReady = false;
    const splitter = new LineSplitter(
      (line) => {
        const ev = parseEvent(line);
        if (!ev) return;
        if (ev.t === 'ready') {
          isReady = true;
          ready();
        } else if (ev.t === 'fatal') {
          failed(this.startError(ev.message));
        } else if (this.proc === proc) {
          this.onEvent(ev);
        }
      },
      () => this.onOversized(),
    );
    proc.on('data', (stream, chunk) => {
      if (stream === DRIVER_STREAMS.events) splitter.push(chunk);
      else if (stream === DRIVER_STREAMS.diag) this.onDiag(chunk);
    });
    this.proc = proc;
    const onExit = (s: ExitStatus | undefined) => {
      if (!isReady) failed(this.startError(undefined, s));
      this.onDriverExit(proc, s);
    };
    proc.exited.then(onExit, () => onExit(undefined));
    const timer = setTimeout(() => failed(new SandboxError(`the ${this.language} interpreter did not start within ${this.startTimeoutMs} ms`)), this.startTimeoutMs);
    try {
      await readyP;
    } catch (e) {
      if (this.proc === proc) this.proc = undefined;
      void proc.signal('SIGKILL').catch(() => undefined);
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  private spawnError(e: unknown): Error {
    const runtime = runtimeOf(this.language);
    if (isCapsuleError(e) && e.code === 'not_found') {
      return new UnsupportedError(`${runtime} is not installed in this sandbox, so it cannot run ${this.language} code: create the sandbox from the python template`, {
        language: this.language,
        runtime,
      });
    }
    return e instanceof Error ? e : new SandboxError(String(e));
  }

  private startError(message: string | undefined, status?: ExitStatus): Error {
    const diag = this.diag.toString('utf8').trim();
    const text = message ?? (diag.split('\n').slice(-5).join('\n') || `exit code ${status?.exitCode ?? 'unknown'}`);
    if (/No module named '?(IPython|traitlets)|Cannot find module '(acorn|typescript)'/.test(`${text}\n${diag}`)) {
      return new UnsupportedError(`this sandbox's template lacks what ${this.language} contexts need (${text.split('\n').pop()}): create the sandbox from the python template`, {
        language: this.language,
      });
    }
    return new SandboxError(`the ${this.language} interpreter failed to start: ${text}`, { language: this.language });
  }

  private onDiag(chunk: Buffer): void {
    const all = Buffer.concat([this.diag, chunk]);
    this.diag = all.length > DIAG_TAIL ? all.subarray(all.length - DIAG_TAIL) : all;
    // Output that escaped the driver's capture (a Node child writing to the inherited fd) still belongs to the cell.
    const run = this.run;
    if (run && !run.ended) this.output(run, 'stdout', chunk.toString('utf8'));
  }

  private onOversized(): void {
    const run = this.run;
    if (run) run.dropped++;
  }

  private onDriverExit(proc: AgentProcess, status: ExitStatus | undefined): void {
    if (this.proc !== proc) return;
    this.proc = undefined;
    const run = this.run;
    if (run && !run.ended) {
      if (run.interrupted?.how === 'restart') {
        run.error ??= {
          name: 'Interrupted',
          value: `the cell did not stop on SIGINT within ${this.graceMs} ms: the interpreter was killed and restarted, and its state is gone`,
          traceback: [],
        };
      } else {
        const code = status ? `exit code ${status.exitCode}${status.signal ? `, ${status.signal}` : ''}` : 'the sandbox went away';
        run.error ??= {
          name: 'InterpreterDied',
          value: `the ${this.language} interpreter exited while the cell ran (${code}${status?.signal === 'SIGKILL' ? '; out of memory?' : ''}); its state is gone`,
          traceback: this.diag.toString('utf8').trim().split('\n').slice(-20),
        };
      }
      run.restarted = true;
      run.sink?.write({ type: 'executionError', error: run.error });
      run.end();
    } else if (!this.closed) {
      this.lostState = true;
    }
  }

  private async killDriver(): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    await proc.signal('SIGKILL').catch(() => undefined);
    await proc.exited.catch(() => undefined);
  }

  // --- cells ------------------------------------------------------------------------------

  private async runCell(opts: RunOptions): Promise<RunCodeResult> {
    opts.signal?.throwIfAborted();
    const started = await this.ensureStarted();
    const restarted = (started && this.restarts > 0) || this.lostState;
    this.lostState = false;
    const proc = this.proc;
    if (!proc) throw new SandboxError(`the ${this.language} interpreter is not running`);
    const run = new Run(++this.seq, opts.maxOutputBytes, opts.sink);
    run.restarted = restarted;
    this.run = run;
    opts.sink?.write({ type: 'start', contextId: this.id, language: this.language });

    let timer: NodeJS.Timeout | undefined;
    let grace: NodeJS.Timeout | undefined;
    const interrupt = (reason: Interrupt['reason']) => {
      if (run.ended || run.interrupted) return;
      run.interrupted = { reason, how: 'signal' };
      void proc.signal('SIGINT').catch(() => undefined);
      grace = setTimeout(() => {
        if (run.ended) return;
        run.interrupted = { reason, how: 'restart' };
        void proc.signal('SIGKILL').catch(() => undefined);
      }, this.graceMs);
    };
    if (opts.timeoutMs > 0) timer = setTimeout(() => interrupt('timeout'), opts.timeoutMs);
    const onAbort = () => interrupt('cancelled');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const line = `${JSON.stringify({ op: 'execute', id: run.id, code: opts.code, envs: opts.envs ?? {} })}\n`;
      await proc.writeStream(DRIVER_STREAMS.requests, Buffer.from(line, 'utf8')).catch(() => {
        // The driver is gone: its exit ends the run.
      });
      await run.done;
    } finally {
      clearTimeout(timer);
      clearTimeout(grace);
      opts.signal?.removeEventListener('abort', onAbort);
      this.run = undefined;
    }
    // A killed interpreter comes back at once, so the next cell does not wait for it.
    if (!this.proc && !this.closed && !this.starting) {
      const p = this.startDriver();
      this.starting = p;
      p.catch(() => undefined).finally(() => {
        if (this.starting === p) this.starting = undefined;
      });
    }
    const result: RunCodeResult = {
      contextId: this.id,
      language: this.language,
      ...(run.executionCount !== undefined ? { executionCount: run.executionCount } : {}),
      stdout: run.stdout.encode('utf8'),
      stderr: run.stderr.encode('utf8'),
      ...(run.stdout.truncated ? { stdoutTruncated: true } : {}),
      ...(run.stderr.truncated ? { stderrTruncated: true } : {}),
      results: run.results,
      ...(run.dropped ? { resultsDropped: run.dropped } : {}),
      ...(run.error ? { error: run.error } : {}),
      ...(run.interrupted ? { interrupted: run.interrupted } : {}),
      ...(run.restarted ? { restarted: true } : {}),
      durationMs: run.durationMs,
    };
    opts.sink?.write({
      type: 'end',
      ...(run.executionCount !== undefined ? { executionCount: run.executionCount } : {}),
      durationMs: run.durationMs,
      ...(run.interrupted ? { interrupted: run.interrupted } : {}),
      ...(run.restarted ? { restarted: true } : {}),
      ...(run.dropped ? { resultsDropped: run.dropped } : {}),
    });
    return result;
  }

  private onEvent(ev: DriverEvent): void {
    const run = this.run;
    // Output of a background thread after its cell ended, or of no cell at all, has no caller to go to.
    if (!run || run.ended || !('id' in ev) || ev.id !== run.id) return;
    switch (ev.t) {
      case 'stdout':
      case 'stderr':
        this.output(run, ev.t, ev.text);
        return;
      case 'display':
      case 'result': {
        const r = toCodeResult(ev.data, ev.t === 'result');
        if (!r || run.results.length >= CODE_LIMITS.maxResults || run.resultBytes + resultSize(r) > CODE_LIMITS.maxRunResultBytes) {
          run.dropped++;
          return;
        }
        run.results.push(r);
        run.resultBytes += resultSize(r);
        this.forward(run, { type: 'result', result: r });
        return;
      }
      case 'error': {
        const e = toExecutionError(ev);
        if (!run.error) run.error = e;
        this.forward(run, { type: 'executionError', error: e });
        return;
      }
      case 'end':
        if (typeof ev.count === 'number') {
          run.executionCount = ev.count;
          this.executionCount = ev.count;
        }
        run.end();
        return;
    }
  }

  private output(run: Run, stream: 'stdout' | 'stderr', text: string): void {
    if (!text) return;
    run[stream].push(Buffer.from(text, 'utf8'));
    this.forward(run, { type: stream, data: text });
  }

  /** To the caller's stream; a full one holds the driver's output (its pipe fills, the cell blocks) until it drains. */
  private forward(run: Run, ev: CodeEvent): void {
    const sink = run.sink;
    if (!sink || sink.write(ev)) return;
    const proc = this.proc;
    proc?.pause();
    void sink.drained().then(() => proc?.resume());
  }

  /** Cells queued behind the running one. */
  get queued(): number {
    return this.waiting;
  }
}
