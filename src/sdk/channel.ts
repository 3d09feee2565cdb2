/**
 * The SDK's end of the command channel (daemon: src/api/routes/channel.ts): one WebSocket per Sandbox,
 * opened on the first buffered foreground `commands.run`, carrying each run as one small message with
 * an id and its answer as another. Several runs share it at once.
 *
 * It only ever makes a run faster, never different:
 *  - the request is the body POST /v1/sandboxes/:id/commands takes, and an answer's error is mapped by
 *    the same errorFromWire into the same typed error;
 *  - when the socket cannot be opened (an older daemon, a proxy that drops upgrades, the daemon is
 *    down) `run` answers undefined having sent nothing, and the caller uses HTTP; it tries again later;
 *  - when the socket drops, the runs waiting on it fail with UnavailableError, as a broken HTTP
 *    connection fails a POST (a command is never sent twice), and the next run opens a new socket;
 *  - the client's timeout (checked every SWEEP_MS) and the connection's AbortSignal cancel the run
 *    (the daemon kills the command, as when an HTTP client hangs up) and reject as HTTP would;
 *  - while nothing is in flight the socket does not keep the process alive, and it closes after
 *    IDLE_CLOSE_MS without use; `close()` (Sandbox.close/kill) closes it at once.
 */
import type net from 'node:net';
import type WebSocket from 'ws';
import { UnavailableError, errorFromWire } from '../errors/index.js';
import { fastChannelAnswer } from '../schemas/fast.js';
import { ChannelServerMessage, CommandResult } from '../schemas/index.js';
import { abortError, clientTimeout, validateResponse, type HttpClient } from './http.js';
import { openSocket } from './socket.js';

/** Requests larger than this (a big stdin) go over HTTP: the daemon takes messages of at most 1 MiB. */
const MAX_REQUEST_CHARS = 256 * 1024;
/** Largest answer accepted: a result holds at most 2 x 16 MiB of output, escaped (as http.ts's MAX_JSON_BYTES). */
const MAX_ANSWER_BYTES = 256 * 1024 * 1024;
/** After a failed open, runs use HTTP for this long before the channel is tried again. */
const RETRY_AFTER_MS = 5_000;
/** A daemon without the channel (404 on the upgrade) is not asked again for this long. */
const UNSUPPORTED_RETRY_MS = 10 * 60_000;
/** An unused channel closes after this long (the daemon keeps HTTP connections far longer). */
const IDLE_CLOSE_MS = 30_000;
/** Longest wait for the upgrade's answer before falling back to HTTP. */
const OPEN_TIMEOUT_MS = 5_000;

interface Pending {
  resolve: (r: CommandResult) => void;
  reject: (e: Error) => void;
  /** performance.now() after which the run is given up (Infinity: never). */
  deadline: number;
  /** Give up: kill the command and reject with the client's timeout error. */
  expire: () => void;
}

/**
 * How often an open channel looks for runs past their client timeout and for idleness. One interval per
 * open channel instead of a timer per run: timers cost more than the rest of the SDK's work on a run, and
 * the client timeout is a safety net with requestTimeoutMs of slack on top of the command's own limit.
 */
const SWEEP_MS = 250;

interface Open {
  ws: WebSocket;
  raw: net.Socket | undefined;
}

export class CommandChannel {
  private open: Open | undefined;
  private opening: Promise<Open | undefined> | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private downUntil = 0;
  private sweeper: NodeJS.Timeout | undefined;
  /** performance.now() when the last run ended (for the idle close). */
  private lastUsed = 0;
  private closed = false;
  /** Sockets opened so far (tests look at it to tell a reconnect). */
  opened = 0;
  /** Runs sent over the channel so far. */
  sent = 0;

  constructor(private readonly http: HttpClient) {}

  /** Runs waiting for their answer. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** Whether a socket is open now. */
  get connected(): boolean {
    return this.open !== undefined;
  }

  /**
   * Run a buffered foreground command (`body`: POST .../commands's body) over the channel. undefined:
   * nothing was sent (no channel now, or the request is too large for one message); use HTTP.
   */
  run(sandboxId: string, body: Record<string, unknown>, timeoutMs: number): Promise<CommandResult | undefined> {
    if (this.closed || Date.now() < this.downUntil) return Promise.resolve(undefined);
    const signal = this.http.conn.signal;
    if (signal?.aborted) return Promise.reject(abortError(signal));
    const id = this.nextId++;
    const text = JSON.stringify({ op: 'run', id, sandboxId, body });
    if (text.length > MAX_REQUEST_CHARS) return Promise.resolve(undefined);
    // Not an async function: on an open channel the caller awaits the answer's own promise, with no
    // extra turns for an async function resolving with another promise (ADR 0016).
    if (this.open) return this.send(this.open, id, text, sandboxId, timeoutMs);
    return (this.opening ??= this.connect()).then((open) => (open ? this.send(open, id, text, sandboxId, timeoutMs) : undefined));
  }

  /** Sends one run on an open channel; undefined when the socket is no longer open (nothing was sent). */
  private send(open: Open, id: number, text: string, sandboxId: string, timeoutMs: number): Promise<CommandResult | undefined> {
    if (open.ws.readyState !== open.ws.OPEN) return Promise.resolve(undefined);
    const signal = this.http.conn.signal;
    const what = `POST /sandboxes/${sandboxId}/commands (command channel)`;
    return new Promise<CommandResult>((resolve, reject) => {
      const settle = (): void => {
        signal?.removeEventListener('abort', onAbort);
        this.pending.delete(id);
        if (this.pending.size === 0) this.idle();
      };
      // Giving up kills the command, as hanging up on the POST does; its late answer is dropped.
      const cancel = (err: Error): void => {
        settle();
        if (open.ws.readyState === open.ws.OPEN) open.ws.send(JSON.stringify({ op: 'cancel', id }));
        reject(err);
      };
      const onAbort = (): void => cancel(abortError(signal));
      this.pending.set(id, {
        resolve: (r) => {
          settle();
          resolve(r);
        },
        reject: (e) => {
          settle();
          reject(e);
        },
        deadline: timeoutMs > 0 ? performance.now() + timeoutMs : Infinity,
        expire: () => cancel(clientTimeout(what, timeoutMs)),
      });
      if (this.pending.size === 1) this.busy();
      this.sent++;
      signal?.addEventListener('abort', onAbort, { once: true });
      // As a Buffer, ws masks it into one frame buffer (one write, not a header and a body in a writev).
      open.ws.send(Buffer.from(text, 'utf8'), { binary: false }, (err) => {
        if (err) this.pending.get(id)?.reject(new UnavailableError(`${what}: sending to the daemon failed: ${err.message}`));
      });
    });
  }

  /** Close the socket; runs still waiting fail with UnavailableError, later runs use HTTP. */
  close(): void {
    this.closed = true;
    this.drop(1000);
  }

  private async connect(): Promise<Open | undefined> {
    try {
      const sock = await openSocket(this.http, '/channel', undefined, this.http.conn.signal, { maxPayload: MAX_ANSWER_BYTES, timeoutMs: OPEN_TIMEOUT_MS });
      if (this.closed) {
        sock.ws.close(1000);
        return undefined;
      }
      const open: Open = { ws: sock.ws, raw: sock.raw };
      this.opened++;
      this.open = open;
      sock.onMessage((data, isBinary) => this.answer(data, isBinary));
      sock.ws.on('close', (code) => {
        if (this.open === open) {
          this.open = undefined;
          if (this.sweeper) clearInterval(this.sweeper);
          this.sweeper = undefined;
        }
        this.failAll(`the connection to the daemon closed (code ${code}) before the command's result`);
      });
      sock.ws.on('error', () => undefined); // followed by close
      this.idle();
      // Never keeps the process alive: while a run waits, its socket does.
      this.sweeper = setInterval(() => this.sweep(), SWEEP_MS);
      this.sweeper.unref();
      return open;
    } catch (e) {
      const status = (e as { details?: { status?: unknown } }).details?.status;
      const notThere = (e as { code?: unknown }).code === 'not_found' || status === 404;
      this.downUntil = Date.now() + (notThere ? UNSUPPORTED_RETRY_MS : RETRY_AFTER_MS);
      return undefined;
    } finally {
      this.opening = undefined;
    }
  }

  private answer(data: Buffer, isBinary: boolean): void {
    let msg: ChannelServerMessage;
    try {
      if (isBinary) throw new Error('binary');
      const value: unknown = JSON.parse(data.toString('utf8'));
      // The common answer (a result) is checked by hand, anything else by the schema (schemas/fast.ts).
      msg = fastChannelAnswer(value) ?? validateResponse(ChannelServerMessage, value, 'a command channel message');
    } catch {
      // A daemon that speaks something else: stop using the channel, fail what waits.
      this.failAll('the daemon sent a command channel message this SDK cannot read (is it the same version?)');
      this.drop(1002);
      return;
    }
    const p = this.pending.get(msg.id);
    if (!p) return; // cancelled meanwhile
    if ('result' in msg) p.resolve(msg.result);
    else p.reject(errorFromWire(msg.error.code, msg.error.message, msg.error.details));
  }

  private failAll(why: string): void {
    for (const p of [...this.pending.values()]) p.reject(new UnavailableError(why));
  }

  private drop(code: number): void {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
    const open = this.open;
    this.open = undefined;
    if (open) {
      open.ws.close(code);
      // Do not wait for the daemon's half of the close handshake to let the process exit.
      open.raw?.unref();
    }
    this.failAll('the command channel was closed');
  }

  /** Something is in flight: keep the process alive for its answer. */
  private busy(): void {
    this.open?.raw?.ref();
  }

  /** Nothing in flight: the socket no longer holds the process open (the sweep closes it once unused long enough). */
  private idle(): void {
    this.lastUsed = performance.now();
    this.open?.raw?.unref();
  }

  /** Runs past their deadline give up; a channel unused for IDLE_CLOSE_MS closes. */
  private sweep(): void {
    const now = performance.now();
    for (const p of [...this.pending.values()]) if (now >= p.deadline) p.expire();
    if (this.pending.size === 0 && now - this.lastUsed >= IDLE_CLOSE_MS) this.drop(1000);
  }
}
