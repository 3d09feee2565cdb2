/**
 * What every channel kind shares: the handler interface the multiplexer
 * calls, the connection surface a channel may use, the one path that reads
 * a channel's first frame (OK or ERROR), and credit accounting.
 */
import { InvalidArgumentError, type CapsuleError } from '../errors/index.js';
import { agentError } from './errors.js';
import { FT, MAX_WINDOW, PayloadReader, ProtocolError, type Frame } from './frames.js';
import type { AgentFeature } from './protocol.js';

/** A channel as the multiplexer sees it. Throwing a ProtocolError from onFrame closes the connection. */
export interface ChannelHandler {
  onFrame(f: Frame): void;
  /** The connection is gone or the channel was abandoned. */
  onClose(err: Error): void;
}

/** What a channel may do with its connection (implemented by connection.ts). */
export interface ChannelHost {
  /** Whether a feature is in effect on the connection. */
  supports(feature: AgentFeature): boolean;
  /** Throws AgentFeatureError unless the feature is in effect: call it before sending what needs it. */
  require(feature: AgentFeature): void;
  /** Largest DATA payload this connection carries (64 KiB, or MAX_PAYLOAD with large-data). */
  readonly maxData: number;
  send(channel: number, type: number, stream: number, payload?: Buffer): void;
  /** The channel is finished: later frames for its id are dropped. */
  forget(channel: number): void;
  /** Run channel work outside the socket handler: a protocol violation closes the connection, never throws. */
  guard(fn: () => void): void;
  /** One frame whose payload is the given pieces in order (sent without joining them). */
  sendGather(channel: number, type: number, stream: number, parts: readonly Buffer[], length: number): void;
  /** Opens a channel with a request frame; the handler is registered before the request leaves. */
  open(type: number, payload: Buffer, handler: (id: number) => ChannelHandler): void;
}

/** An ERROR frame as the product's error (errno mapped to a class). */
export function readError(f: Frame, path?: string): CapsuleError {
  const r = new PayloadReader(f.payload, 'ERROR');
  const errno = r.bytes(64).toString('latin1');
  const message = r.bytes(4096).toString('utf8');
  if (!/^E[A-Z0-9]+$/.test(errno)) throw new ProtocolError(`bad errno name in ERROR`);
  return agentError(errno, message, path);
}

/**
 * A channel whose first frame from the agent is the request's reply: `OK`
 * (the request was accepted, with a payload per request) or `ERROR` (it was
 * refused and the channel is over). Every channel kind starts this way, so
 * this is the only place that reads that first frame; a subclass sees
 * `accepted` or `refused` once, then the channel's later frames in `frame`.
 */
export abstract class ReplyChannel implements ChannelHandler {
  private replied = false;

  constructor(
    protected readonly host: ChannelHost,
    readonly id: number,
    /** The request's name, for protocol error messages. */
    protected readonly what: string,
    /** The path the request is about, carried into errors. */
    protected readonly path?: string,
  ) {}

  onFrame(f: Frame): void {
    if (this.replied) {
      if (f.type === FT.OK) throw new ProtocolError(`second OK on a ${this.what} channel`);
      this.frame(f);
      return;
    }
    if (f.type === FT.ERROR) {
      this.replied = true;
      this.host.forget(this.id);
      this.refused(readError(f, this.path));
      return;
    }
    if (f.type !== FT.OK) throw new ProtocolError(`unexpected frame 0x${f.type.toString(16)} before the ${this.what} reply`);
    this.replied = true;
    this.accepted(f.payload);
  }

  /** True once the reply (OK or ERROR) arrived. */
  protected get hasReply(): boolean {
    return this.replied;
  }

  /** The request was accepted; `payload` is the OK's. */
  protected abstract accepted(payload: Buffer): void;
  /** The request was refused; the channel is already forgotten. */
  protected abstract refused(err: CapsuleError): void;
  /** A frame after the reply. One-shot requests get none. */
  protected frame(f: Frame): void {
    throw new ProtocolError(`unexpected frame 0x${f.type.toString(16)} after the ${this.what} reply`);
  }

  abstract onClose(err: Error): void;
}

/**
 * Opens a channel and resolves with what its handler delivers; a request that
 * cannot even be sent (bad argument, connection closed) rejects the same way.
 */
export function openChannel<T>(
  host: ChannelHost,
  type: number,
  build: () => Buffer,
  make: (id: number, resolve: (v: T) => void, reject: (e: Error) => void) => ChannelHandler,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    try {
      host.open(type, build(), (id) => make(id, resolve, reject));
    } catch (e) {
      reject(e);
    }
  });
}

/** Send credit for one (channel, stream): waits until it turns positive. */
export class Credit {
  value: number;
  private waiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private failed: Error | undefined;
  constructor(initial: number) {
    this.value = initial;
  }
  add(n: number): void {
    this.value += n;
    if (this.value > MAX_WINDOW) throw new ProtocolError('credit grant beyond the maximum window');
    if (this.value > 0) for (const w of this.waiters.splice(0)) w.resolve();
  }
  wait(): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.value > 0) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }
  /** True while someone waits for credit. */
  get waiting(): boolean {
    return this.waiters.length > 0;
  }
  fail(err: Error): void {
    this.failed ??= err;
    for (const w of this.waiters.splice(0)) w.reject(err);
  }
}

/** Paths the agent accepts: absolute, no NUL, shorter than PATH_MAX. Checked before anything is sent. */
export function checkPath(path: string): void {
  if (typeof path !== 'string' || !path.startsWith('/')) throw new InvalidArgumentError(`path must be absolute: ${String(path)}`, { path });
  if (path.includes('\0')) throw new InvalidArgumentError('path contains a NUL byte', { path });
  if (Buffer.byteLength(path) >= 4096) throw new InvalidArgumentError('path is too long', { path });
}
