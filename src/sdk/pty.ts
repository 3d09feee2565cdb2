/**
 * Terminals in a sandbox: `sandbox.pty`.
 *
 *   const term = await sbx.pty.create({ cols: 120, rows: 40, onData: (d) => process.stdout.write(d) });
 *   await term.sendInput('ls -la\n');
 *   await term.resize({ cols: 100, rows: 30 });
 *   await term.sendInput('exit\n');
 *   const { exitCode } = await term.wait();
 *
 * A terminal keeps running when its client goes away (`disconnect()`, or the
 * program ends); `pty.connect(pid)` attaches again and first receives its
 * recent output (at most 64 KiB), then live output.
 */
import type WebSocket from 'ws';
import { TimeoutError } from '../errors/index.js';
import { CommandResult, PtyServerMessage, PtyStarted, type CreatePtyRequest } from '../schemas/index.js';
import type { HttpClient } from './http.js';
import { lostSocket, openSocket, sendOn, socketError } from './socket.js';

export interface PtyConnectOptions {
  /** Terminal output, raw bytes (escape sequences and all), in order. */
  onData: (data: Uint8Array) => void;
  signal?: AbortSignal;
}

export interface PtyCreateOptions extends PtyConnectOptions {
  /** Width in character cells; default 80. */
  cols?: number;
  /** Height in lines; default 24. */
  rows?: number;
  /** Program to run; default a login shell (bash -l where the sandbox has it, else sh -l). */
  cmd?: string[];
  /** Working directory; default the user's home. */
  cwd?: string;
  /** Extra environment variables; TERM is xterm-256color unless set here. */
  envs?: Record<string, string>;
  /** User name or uid inside the sandbox; default root. */
  user?: string;
  /** A name to list, connect to and kill the terminal by (unique among running processes). */
  tag?: string;
  /** Kill the terminal's program after this many ms; default no limit. */
  timeoutMs?: number;
}

export interface PtyExit {
  exitCode: number;
  signal?: string;
}

/** A connected terminal. */
export class PtyHandle {
  /** Bytes of recent output replayed when the connection opened (before live output). */
  readonly replayBytes: number;
  private readonly exit: Promise<PtyExit>;
  private disconnected = false;

  /** @internal */
  constructor(
    private readonly http: HttpClient,
    private readonly base: string,
    /** Pid of the terminal's program inside the sandbox. */
    readonly pid: number,
    private readonly ws: WebSocket,
    ready: { replayBytes: number },
    exit: Promise<PtyExit>,
  ) {
    this.replayBytes = ready.replayBytes;
    this.exit = exit;
    this.exit.catch(() => undefined);
  }

  /** Keystrokes (or any bytes) to the terminal; a string is sent as UTF-8. */
  sendInput(data: string | Uint8Array): Promise<void> {
    return sendOn(this.ws, typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data.buffer, data.byteOffset, data.byteLength), true);
  }

  /** New size; the program in it gets SIGWINCH. */
  resize(size: { cols: number; rows: number }): Promise<void> {
    return sendOn(this.ws, JSON.stringify({ type: 'resize', cols: size.cols, rows: size.rows }), false);
  }

  /** Kill the terminal's program (SIGKILL to its process group). */
  async kill(): Promise<void> {
    await this.http.empty('DELETE', `/sandboxes/${this.base}/commands/${this.pid}`);
  }

  /** Resolves when the program exits. After `disconnect()`, asks the daemon instead of the socket. */
  async wait(): Promise<PtyExit> {
    if (!this.disconnected) return this.exit;
    const r = await new Pty(this.http, this.base).waitFor(this.pid);
    return r;
  }

  /** Stop receiving output; the terminal keeps running (connect again with `pty.connect(pid)`). */
  disconnect(): void {
    this.disconnected = true;
    this.ws.close(1000);
  }
}

export class Pty {
  /** @internal */
  constructor(
    private readonly http: HttpClient,
    /** The sandbox id, URL-encoded. */
    private readonly base: string,
  ) {}

  /** Start a terminal and connect to it. */
  async create(opts: PtyCreateOptions): Promise<PtyHandle> {
    const body: CreatePtyRequest = {};
    if (opts.cols !== undefined) body.cols = opts.cols;
    if (opts.rows !== undefined) body.rows = opts.rows;
    if (opts.cmd !== undefined) body.cmd = opts.cmd;
    if (opts.cwd !== undefined) body.cwd = opts.cwd;
    if (opts.envs !== undefined) body.envs = opts.envs;
    if (opts.user !== undefined) body.user = opts.user;
    if (opts.tag !== undefined) body.tag = opts.tag;
    if (opts.timeoutMs !== undefined) body.timeoutMs = opts.timeoutMs;
    const { pid } = await this.http.json('POST', `/sandboxes/${this.base}/pty`, PtyStarted, { json: body, signal: opts.signal });
    return this.connect(pid, opts);
  }

  /** Attach to a running terminal by pid or tag: its recent output (at most 64 KiB) first, then live output. */
  async connect(pidOrTag: number | string, opts: PtyConnectOptions): Promise<PtyHandle> {
    const what = `terminal ${pidOrTag}`;
    const sock = await openSocket(this.http, `/sandboxes/${this.base}/pty/${encodeURIComponent(String(pidOrTag))}`, undefined, opts.signal);
    const ws = sock.ws;
    return new Promise<PtyHandle>((resolve, reject) => {
      let handle: PtyHandle | undefined;
      let resolveExit!: (e: PtyExit) => void;
      let rejectExit!: (e: Error) => void;
      const exit = new Promise<PtyExit>((res, rej) => {
        resolveExit = res;
        rejectExit = rej;
      });
      let ended = false;
      sock.onMessage((data, isBinary) => {
        if (isBinary) {
          try {
            opts.onData(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
          } catch (e) {
            process.nextTick(() => {
              throw e;
            });
          }
          return;
        }
        let parsed;
        try {
          parsed = PtyServerMessage.safeParse(JSON.parse(data.toString('utf8')));
        } catch {
          parsed = undefined;
        }
        if (!parsed?.success) return; // a newer daemon's message: ignored
        const m = parsed.data;
        if (m.type === 'ready') {
          handle = new PtyHandle(this.http, this.base, m.pid, ws, m, exit);
          resolve(handle);
        } else if (m.type === 'exit') {
          ended = true;
          resolveExit(m.signal !== undefined ? { exitCode: m.exitCode, signal: m.signal } : { exitCode: m.exitCode });
        } else {
          ended = true;
          const err = socketError(m);
          rejectExit(err);
          if (!handle) reject(err);
        }
      });
      ws.on('close', (code) => {
        if (ended) return;
        const err = lostSocket(what, code);
        rejectExit(err);
        if (!handle) reject(err);
      });
      ws.on('error', () => undefined);
    });
  }

  /** Set a terminal's size without a connection. */
  async resize(pidOrTag: number | string, size: { cols: number; rows: number }): Promise<void> {
    await this.http.empty('POST', `/sandboxes/${this.base}/pty/${encodeURIComponent(String(pidOrTag))}/resize`, { json: size });
  }

  /** Kill a terminal's program by pid or tag. */
  async kill(pidOrTag: number | string): Promise<void> {
    await this.http.empty('DELETE', `/sandboxes/${this.base}/commands/${encodeURIComponent(String(pidOrTag))}`);
  }

  /** @internal The exit of a terminal, asked of the daemon (no socket). */
  async waitFor(pid: number): Promise<PtyExit> {
    for (;;) {
      try {
        const r = await this.http.json('GET', `/sandboxes/${this.base}/commands/${pid}/wait`, CommandResult, {
          query: { timeoutMs: 300_000 },
          timeoutMs: this.http.conn.requestTimeoutMs === 0 ? 0 : 300_000 + this.http.conn.requestTimeoutMs,
        });
        return r.signal !== undefined ? { exitCode: r.exitCode, signal: r.signal } : { exitCode: r.exitCode };
      } catch (e) {
        // The daemon's own "still running" answer: ask again. The client's timeout is a failure.
        if (e instanceof TimeoutError && e.details?.clientTimeoutMs === undefined) continue;
        throw e;
      }
    }
  }
}
