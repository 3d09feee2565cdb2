/**
 * Running commands in a sandbox: `sandbox.commands`.
 *
 * A command that exits non-zero, or is killed by its timeout, is not an
 * error: the promise resolves with a CommandResult carrying the exit code
 * (agents need the output either way). Errors are for real failures: the
 * sandbox is gone, the request is invalid, the daemon is unreachable.
 */
import { NotFoundError, TimeoutError, UnavailableError, errorFromWire } from '../errors/index.js';
import {
  BackgroundStarted,
  CommandEvent,
  CommandResult,
  LIMITS,
  ListProcessesResponse,
  type ProcessInfo,
  type SIGNALS,
} from '../schemas/index.js';
import type WebSocket from 'ws';
import { abortError, isAbortError, type HttpClient, type StreamedBody } from './http.js';
import { readNdjson } from './ndjson.js';
import { openSocket, sendOn, socketLines } from './socket.js';
import { fastCommandResult } from '../schemas/fast.js';
import { CommandChannel } from './channel.js';

export type Signal = (typeof SIGNALS)[number];

/**
 * Called with each piece of output as it arrives: UTF-8 text (a character is
 * never split between two calls), or base64 of the exact bytes with
 * `encoding: 'base64'`.
 */
export type OutputCallback = (data: string) => void | Promise<void>;

/** How output is carried: `utf8` text (default; bytes that are not UTF-8 become U+FFFD) or `base64` of the exact bytes. */
export type OutputEncoding = 'utf8' | 'base64';

export interface RunOptions {
  /** Extra environment variables for this command, over the sandbox's own. */
  envs?: Record<string, string>;
  /** Working directory inside the sandbox; default `/`. */
  cwd?: string;
  /** User name or numeric uid inside the sandbox; default root. */
  user?: string;
  /**
   * Kill the command after this many ms; 0 means no limit. Default: 60 s for
   * foreground commands, no limit for background ones (the daemon's defaults).
   */
  timeoutMs?: number;
  /** Written to the command's stdin, which is then closed. */
  stdin?: string;
  /** Called with stdout as it arrives (switches a foreground run to streaming). */
  onStdout?: OutputCallback;
  /** Called with stderr as it arrives (switches a foreground run to streaming). */
  onStderr?: OutputCallback;
  /** Return a CommandHandle at once instead of waiting for the exit. */
  background?: boolean;
  /** Keep at most this many bytes of each of stdout and stderr in the result; default 1 MiB. Callbacks still see everything. */
  maxOutputBytes?: number;
  /**
   * `base64`: callbacks and the result carry base64 of the exact bytes (for
   * output that is not text; decode with `Buffer.from(s, 'base64')`). Default `utf8`.
   */
  encoding?: OutputEncoding;
  /**
   * Aborting it kills the command (SIGKILL) and rejects with an AbortError.
   * For background commands it only cancels starting it.
   */
  signal?: AbortSignal;
  /** A name for the process, unique among the sandbox's running processes: connect to, list and kill it by this. */
  tag?: string;
  /**
   * Background only: follow the command over one WebSocket that also carries its stdin, so
   * `sendStdin` streams over it instead of sending one request per chunk.
   */
  streamStdin?: boolean;
}

export interface WaitOptions {
  /** How the result carries output; default: the handle's (from run or connect), else utf8. */
  encoding?: OutputEncoding;
  /** Give up after this many ms with a TimeoutError (the command keeps running). Default: wait as long as it takes. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface ConnectOptions {
  onStdout?: OutputCallback;
  onStderr?: OutputCallback;
  /** See RunOptions.encoding. */
  encoding?: OutputEncoding;
  /** Connect over one WebSocket that carries output and stdin (`sendStdin` streams over it). */
  streamStdin?: boolean;
}

/** Appends output up to a byte limit, as the daemon does for buffered results. */
export class BoundedOutput {
  private parts: string[] = [];
  private raw: Buffer[] = [];
  private bytes = 0;
  truncated = false;
  constructor(
    private readonly maxBytes: number,
    private readonly encoding: OutputEncoding = 'utf8',
  ) {}

  append(data: string): void {
    if (this.truncated) return;
    if (this.encoding === 'base64') {
      // Pieces of base64 do not concatenate (padding): keep bytes, encode once at the end.
      const buf = Buffer.from(data, 'base64');
      const room = this.maxBytes - this.bytes;
      const part = buf.length <= room ? buf : buf.subarray(0, room);
      this.raw.push(part);
      this.bytes += part.length;
      if (part.length < buf.length) this.truncated = true;
      return;
    }
    const size = Buffer.byteLength(data);
    if (this.bytes + size <= this.maxBytes) {
      this.parts.push(data);
      this.bytes += size;
      return;
    }
    const room = this.maxBytes - this.bytes;
    const buf = Buffer.from(data);
    // Back up to the start of a character so the kept text stays valid UTF-8.
    let end = room;
    while (end > 0 && ((buf[end] ?? 0) & 0xc0) === 0x80) end--;
    if (end > 0) this.parts.push(buf.subarray(0, end).toString('utf8'));
    this.bytes += end;
    this.truncated = true;
  }

  toString(): string {
    return this.encoding === 'base64' ? Buffer.concat(this.raw).toString('base64') : this.parts.join('');
  }
}

/** Timeout for an HTTP request that lasts as long as a command: the command's limit plus slack. */
function commandRequestTimeout(http: HttpClient, commandTimeoutMs: number | undefined): number {
  const cmd = commandTimeoutMs ?? LIMITS.defaultCommandTimeoutMs;
  if (cmd === 0 || http.conn.requestTimeoutMs === 0) return 0;
  return cmd + http.conn.requestTimeoutMs;
}

/** Longest single /wait request; longer waits are made of several. */
const WAIT_SLICE_MS = 5 * 60_000;

/**
 * Follow `.../commands/:pid/stream` (or a POST with stream:true), calling the
 * callbacks in order, and assemble the result from the events.
 */
async function consumeEvents(
  body: ReadableStream<Uint8Array>,
  what: string,
  fail: (e: unknown) => Error,
  cb: ConnectOptions & { maxOutputBytes?: number | undefined; onStart?: (pid: number) => void },
  knownPid?: number,
): Promise<CommandResult> {
  const max = cb.maxOutputBytes ?? LIMITS.defaultOutputBytes;
  const encoding = cb.encoding ?? 'utf8';
  const stdout = new BoundedOutput(max, encoding);
  const stderr = new BoundedOutput(max, encoding);
  let pid = knownPid;
  for await (const ev of readNdjson(body, CommandEvent, { what, onReadError: fail })) {
    switch (ev.type) {
      case 'start':
        pid = ev.pid;
        cb.onStart?.(ev.pid);
        break;
      case 'stdout':
        stdout.append(ev.data);
        if (cb.onStdout) await cb.onStdout(ev.data);
        break;
      case 'stderr':
        stderr.append(ev.data);
        if (cb.onStderr) await cb.onStderr(ev.data);
        break;
      case 'error':
        throw errorFromWire(ev.error.code, ev.error.message);
      case 'exit': {
        const result: CommandResult = { pid: pid ?? 0, exitCode: ev.exitCode, stdout: stdout.toString(), stderr: stderr.toString() };
        if (ev.signal !== undefined) result.signal = ev.signal;
        if (encoding === 'base64') result.encoding = 'base64';
        if (stdout.truncated) result.stdoutTruncated = true;
        if (stderr.truncated) result.stderrTruncated = true;
        if (ev.timedOut) result.timedOut = true;
        if (ev.oomKilled) result.oomKilled = true;
        return result;
      }
    }
  }
  throw new UnavailableError(`${what}: the output stream ended before the command's exit was reported`);
}

/**
 * A command running in the background. Get one from
 * `commands.run(cmd, { background: true })` or `commands.connect(pid)`.
 */
export class CommandHandle {
  private follow: Promise<CommandResult> | undefined;
  private followAbort: AbortController | undefined;

  /** @internal */
  constructor(
    private readonly http: HttpClient,
    private readonly base: string,
    /** Process id inside the sandbox. */
    readonly pid: number,
    follow?: { stream: StreamedBody; abort: AbortController; callbacks: ConnectOptions },
    private readonly encoding?: OutputEncoding,
    /** The process's WebSocket, when connected with streamStdin: stdin goes over it. */
    private readonly socket?: WebSocket,
  ) {
    if (follow) {
      this.followAbort = follow.abort;
      const what = `GET ${this.base}/${this.pid}/stream`;
      this.follow = consumeEvents(follow.stream.body, what, follow.stream.fail, follow.callbacks, this.pid);
      // wait() reports a failure of the follower; never leave it unhandled meanwhile.
      this.follow.catch(() => {});
    }
  }

  /**
   * Wait for the command to exit and return its result (output as buffered by
   * the daemon). When the handle follows output with callbacks, it resolves
   * only after every callback has been called.
   */
  async wait(opts: WaitOptions = {}): Promise<CommandResult> {
    const deadline = opts.timeoutMs !== undefined ? Date.now() + opts.timeoutMs : undefined;
    const path = `${this.base}/${this.pid}/wait`;
    let result: CommandResult;
    for (;;) {
      const left = deadline === undefined ? WAIT_SLICE_MS : Math.max(0, deadline - Date.now());
      const slice = Math.min(left, WAIT_SLICE_MS);
      try {
        result = await this.http.json('GET', path, CommandResult, {
          query: { timeoutMs: slice, encoding: opts.encoding ?? this.encoding },
          signal: opts.signal,
          timeoutMs: this.http.conn.requestTimeoutMs === 0 ? 0 : slice + this.http.conn.requestTimeoutMs,
        });
        break;
      } catch (e) {
        const more = deadline === undefined || deadline - Date.now() > 0;
        const fromDaemon = e instanceof TimeoutError && e.details?.clientTimeoutMs === undefined;
        if (fromDaemon && more) continue;
        throw e;
      }
    }
    if (this.follow) {
      await this.follow.catch((e: unknown) => {
        // disconnect() stops the follower on purpose; that is not a failure.
        if (!this.followAbort?.signal.aborted) throw e;
      });
    }
    return result;
  }

  /** Kill the command (SIGKILL to its process group). */
  async kill(): Promise<void> {
    await this.http.empty('DELETE', `${this.base}/${this.pid}`);
  }

  /** Send a signal to the command's process group. */
  async signal(signal: Signal): Promise<void> {
    await this.http.empty('POST', `${this.base}/${this.pid}/signal`, { json: { signal } });
  }

  /** Write to the command's stdin; `eof: true` closes it afterwards. Streams over the handle's WebSocket when it has one. */
  async sendStdin(data: string | Uint8Array, opts: { eof?: boolean } = {}): Promise<void> {
    if (!this.socket) return sendStdin(this.http, this.base, this.pid, data, opts);
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    if (bytes.length > 0) await sendOn(this.socket, bytes, true);
    if (opts.eof) await sendOn(this.socket, JSON.stringify({ type: 'eof' }), false);
  }

  /** Stop following output (callbacks are no longer called); the command keeps running. */
  disconnect(): void {
    this.followAbort?.abort();
  }
}

async function sendStdin(http: HttpClient, base: string, pid: number, data: string | Uint8Array, opts: { eof?: boolean }): Promise<void> {
  const body: { data?: string; encoding?: 'utf8' | 'base64'; eof?: boolean } = {};
  if (typeof data === 'string') {
    if (data !== '') body.data = data;
  } else if (data.byteLength > 0) {
    body.data = Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('base64');
    body.encoding = 'base64';
  }
  if (opts.eof) body.eof = true;
  await http.empty('POST', `${base}/${pid}/stdin`, { json: body });
}

export class Commands {
  private readonly base: string;
  /** Buffered foreground runs go over it when it can be opened (channel.ts); undefined: HTTP only. */
  private readonly channel: CommandChannel | undefined;

  /** @internal */
  constructor(
    private readonly http: HttpClient,
    private readonly sandboxId: string,
  ) {
    this.base = `/sandboxes/${encodeURIComponent(sandboxId)}/commands`;
    this.channel = http.conn.commandChannel ? new CommandChannel(http) : undefined;
  }

  /** @internal The command channel (tests look at it); undefined when turned off. */
  get commandChannel(): CommandChannel | undefined {
    return this.channel;
  }

  /** @internal Close the command channel (Sandbox.close and kill); later runs use HTTP. */
  closeChannel(): void {
    this.channel?.close();
  }

  /**
   * Run a command. A string runs with `/bin/sh -c`; an array is an argv run
   * directly (no shell, one element per argument).
   *
   * - foreground (default): resolves with the CommandResult once it exits;
   * - with onStdout/onStderr (or a signal): output streams to the callbacks in order;
   * - `background: true`: resolves at once with a CommandHandle.
   */
  run(cmd: string | string[], opts: RunOptions & { background: true }): Promise<CommandHandle>;
  run(cmd: string | string[], opts?: RunOptions & { background?: false | undefined }): Promise<CommandResult>;
  run(cmd: string | string[], opts?: RunOptions): Promise<CommandResult | CommandHandle>;
  async run(cmd: string | string[], opts: RunOptions = {}): Promise<CommandResult | CommandHandle> {
    const request = {
      cmd,
      envs: opts.envs,
      cwd: opts.cwd,
      user: opts.user,
      timeoutMs: opts.timeoutMs,
      maxOutputBytes: opts.maxOutputBytes,
      encoding: opts.encoding,
    };
    if (opts.background) {
      const started = await this.http.json('POST', this.base, BackgroundStarted, {
        json: { ...request, background: true, ...(opts.tag !== undefined ? { tag: opts.tag } : {}) },
        signal: opts.signal,
      });
      const handle = await this.attach(started.pid, opts);
      if (opts.stdin !== undefined) await handle.sendStdin(opts.stdin, { eof: true });
      return handle;
    }
    const body = { ...request, stdin: opts.stdin, ...(opts.tag !== undefined ? { tag: opts.tag } : {}) };
    if (!opts.onStdout && !opts.onStderr && !opts.signal) {
      const timeoutMs = commandRequestTimeout(this.http, opts.timeoutMs);
      const viaChannel = await this.channel?.run(this.sandboxId, body, timeoutMs);
      if (viaChannel) return viaChannel;
      return this.http.json('POST', this.base, CommandResult, { json: body, timeoutMs }, fastCommandResult);
    }
    return this.runStreaming(body, opts);
  }

  private async runStreaming(body: Record<string, unknown>, opts: RunOptions): Promise<CommandResult> {
    const signal = opts.signal;
    if (signal?.aborted) throw abortError(signal);
    // Our own controller lets a failing callback stop the stream too.
    const local = new AbortController();
    const onAbort = () => local.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    let pid: number | undefined;
    let exited = false;
    const what = `POST ${this.base}`;
    try {
      const { body: stream, fail } = await this.http.stream('POST', this.base, {
        json: { ...body, stream: true },
        signal: local.signal,
      });
      const result = await consumeEvents(stream, what, fail, {
        onStdout: opts.onStdout,
        onStderr: opts.onStderr,
        encoding: opts.encoding,
        maxOutputBytes: opts.maxOutputBytes,
        onStart: (p) => {
          pid = p;
        },
      });
      exited = true;
      return result;
    } catch (e) {
      if (!exited && pid !== undefined) {
        // The caller gave up (abort, or a callback threw): do not leave the command running.
        const p = pid;
        await this.http.empty('DELETE', `${this.base}/${p}`, { timeoutMs: 5000 }).catch(() => {});
      }
      if (signal?.aborted && (isAbortError(e) || local.signal.aborted)) throw abortError(signal);
      throw e;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Processes started in this sandbox (running, and recently exited), optionally only those with a tag. */
  async list(opts: { tag?: string } = {}): Promise<ProcessInfo[]> {
    const res = await this.http.json('GET', this.base, ListProcessesResponse, opts.tag !== undefined ? { query: { tag: opts.tag } } : {});
    return res.processes;
  }

  /** Kill a process by pid or tag (SIGKILL to its process group). */
  async kill(pidOrTag: number | string): Promise<void> {
    await this.http.empty('DELETE', `${this.base}/${encodeURIComponent(String(pidOrTag))}`);
  }

  /** Write to a background process's stdin; `eof: true` closes it afterwards. */
  async sendStdin(pid: number, data: string | Uint8Array, opts: { eof?: boolean } = {}): Promise<void> {
    await sendStdin(this.http, this.base, pid, data, opts);
  }

  /**
   * Attach to a running (or recently exited) process by pid or tag. With callbacks, its recent output
   * (at most 64 KiB per stream) is replayed to them, then live output follows.
   */
  async connect(pidOrTag: number | string, opts: ConnectOptions = {}): Promise<CommandHandle> {
    if (!opts.onStdout && !opts.onStderr && !opts.streamStdin) {
      const known = await this.list(typeof pidOrTag === 'string' ? { tag: pidOrTag } : {});
      const found = typeof pidOrTag === 'string' ? (known.find((p) => p.running) ?? known.at(-1)) : known.find((p) => p.pid === pidOrTag);
      if (!found) throw new NotFoundError(`no process ${pidOrTag} in this sandbox (see commands.list())`, typeof pidOrTag === 'string' ? { tag: pidOrTag } : { pid: pidOrTag });
      return this.attach(found.pid, opts);
    }
    return this.attach(pidOrTag, opts);
  }

  /** Make a handle; with callbacks, open the output stream first so a bad pid fails here. */
  private async attach(pidOrTag: number | string, callbacks: ConnectOptions): Promise<CommandHandle> {
    if (callbacks.streamStdin) return this.attachSocket(pidOrTag, callbacks);
    const pid = pidOrTag;
    if (!callbacks.onStdout && !callbacks.onStderr) return new CommandHandle(this.http, this.base, Number(pid), undefined, callbacks.encoding);
    const abort = new AbortController();
    const stream = await this.http.stream('GET', `${this.base}/${encodeURIComponent(String(pid))}/stream`, {
      signal: abort.signal,
      ...(callbacks.encoding ? { query: { encoding: callbacks.encoding } } : {}),
    });
    if (typeof pid === 'string') {
      // A tag: the stream's first event names the pid.
      const [a, b] = stream.body.tee();
      const it = readNdjson(a, CommandEvent, { what: `GET ${this.base}/${pid}/stream` });
      const first = await it.next();
      await it.return(undefined); // cancels this branch of the tee, so it keeps nothing
      const resolved = !first.done && first.value.type === 'start' ? first.value.pid : 0;
      return new CommandHandle(this.http, this.base, resolved, { stream: { body: b, fail: stream.fail }, abort, callbacks: { onStdout: callbacks.onStdout, onStderr: callbacks.onStderr, encoding: callbacks.encoding } }, callbacks.encoding);
    }
    return new CommandHandle(this.http, this.base, pid, {
      stream,
      abort,
      callbacks: { onStdout: callbacks.onStdout, onStderr: callbacks.onStderr, encoding: callbacks.encoding },
    }, callbacks.encoding);
  }

  /** One WebSocket for output (CommandEvent text frames, read like the NDJSON stream) and stdin. */
  private async attachSocket(pidOrTag: number | string, callbacks: ConnectOptions): Promise<CommandHandle> {
    const abort = new AbortController();
    const path = `${this.base}/${encodeURIComponent(String(pidOrTag))}/connect`;
    const sock = await openSocket(this.http, path, callbacks.encoding ? { encoding: callbacks.encoding } : undefined);
    const ws = sock.ws;
    abort.signal.addEventListener('abort', () => ws.close(1000), { once: true });
    const lines = socketLines(sock);
    // The first event names the pid (a tag was given, or to check the process is there).
    const [a, b] = lines.tee();
    const it = readNdjson(a, CommandEvent, { what: `GET ${path}` });
    const first = await it.next();
    await it.return(undefined); // cancels this branch of the tee, so it keeps nothing
    if (first.done || first.value.type !== 'start') {
      ws.close();
      throw new UnavailableError(`GET ${path}: the connection closed before the process was found`);
    }
    const fail = (e: unknown) => (e instanceof Error ? e : new UnavailableError(String(e)));
    return new CommandHandle(
      this.http,
      this.base,
      first.value.pid,
      { stream: { body: b, fail }, abort, callbacks: { onStdout: callbacks.onStdout, onStderr: callbacks.onStderr, encoding: callbacks.encoding } },
      callbacks.encoding,
      ws,
    );
  }
}
