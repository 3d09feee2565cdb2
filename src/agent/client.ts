/**
 * Daemon-side client of the in-sandbox agent (protocol: docs/agent-protocol.md).
 *
 * One unix stream connection carries many channels; each request opens a
 * channel. Output and file data flow under per-channel credit, so a slow
 * consumer only stalls its own channel. Everything the agent sends is
 * treated as hostile: frames, fields and counts are bounded, and any
 * violation closes the connection with a SandboxError instead of throwing.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import os from 'node:os';
import { Readable } from 'node:stream';

import { CapsuleError, InvalidArgumentError, PayloadTooLargeError, SandboxError, TimeoutError } from '../errors/index.js';
import { agentError } from './errors.js';
import {
  encodeFrame,
  EXEC_HOLD_REPLY,
  EXEC_STDIN_PIPE,
  FrameDecoder,
  FT,
  INIT_WINDOW,
  MAX_DATA,
  MAX_NAME_BYTES,
  MAX_PAYLOAD,
  MAX_TARGET_BYTES,
  MAX_WINDOW,
  PayloadReader,
  PayloadWriter,
  PROTO_VERSION,
  ProtocolError,
  STREAM_ERR,
  STREAM_IN,
  STREAM_OUT,
  type Frame,
} from './frames.js';
import { describeEndpoint, type AgentConnection, type AgentEndpoint, type AgentProcess, type ExecRequest, type ExitStatus, type FileEntry, type FileType } from './types.js';

export interface ConnectOptions {
  /** How long to wait for the socket and the agent's HELLO (default 5000 ms). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface ProcessInfo {
  pid: number;
  argv: string[];
  /** Only present with includeExited. */
  exited?: boolean;
  exitCode?: number;
}

const DEFAULT_LIST_LIMIT = 10_000;
const MAX_LIST_LIMIT = 1_000_000;
const FILE_TYPES: FileType[] = ['unknown', 'file', 'dir', 'symlink', 'fifo', 'socket', 'char', 'block'];
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

interface ChannelHandler {
  onFrame(f: Frame): void;
  /** The connection is gone or the channel was abandoned. */
  onClose(err: Error): void;
}

function signalName(sig: number): string | undefined {
  for (const [name, num] of Object.entries(os.constants.signals)) if (num === sig) return name;
  return undefined;
}

function signalNumber(sig: NodeJS.Signals | number): number {
  if (typeof sig === 'number') {
    if (!Number.isInteger(sig) || sig < 1 || sig > 64) throw new InvalidArgumentError(`invalid signal number ${sig}`);
    return sig;
  }
  const n = (os.constants.signals as Record<string, number | undefined>)[sig];
  if (n === undefined) throw new InvalidArgumentError(`unknown signal ${sig}`);
  return n;
}

function readError(f: Frame, path?: string): CapsuleError {
  const r = new PayloadReader(f.payload, 'ERROR');
  const errno = r.bytes(64).toString('latin1');
  const message = r.bytes(4096).toString('utf8');
  if (!/^E[A-Z0-9]+$/.test(errno)) throw new ProtocolError(`bad errno name in ERROR`);
  return agentError(errno, message, path);
}

function decodeName(raw: Buffer): { name: string; nameBase64?: string } {
  try {
    return { name: utf8Strict.decode(raw) };
  } catch {
    return { name: raw.toString('utf8'), nameBase64: raw.toString('base64') };
  }
}

function readEntry(r: PayloadReader, parentOrPath: string, isList: boolean): FileEntry {
  const typeNum = r.u8();
  const mode = r.u32();
  const size = r.u64();
  const mtimeMs = r.i64();
  const rawName = r.bytes(MAX_NAME_BYTES);
  const rawTarget = r.bytes(MAX_TARGET_BYTES);
  if (rawName.length === 0) throw new ProtocolError('entry with an empty name');
  if (isList && (rawName.includes(0x2f) || rawName.includes(0))) throw new ProtocolError('list entry name contains / or NUL');
  const type = FILE_TYPES[typeNum] ?? 'unknown';
  const { name, nameBase64 } = decodeName(rawName);
  const path = isList ? (parentOrPath.endsWith('/') ? parentOrPath + name : `${parentOrPath}/${name}`) : parentOrPath;
  const entry: FileEntry = { name, path, type, size, mode, mtimeMs };
  if (nameBase64 !== undefined) entry.nameBase64 = nameBase64;
  if (type === 'symlink') entry.symlinkTarget = rawTarget.toString('utf8');
  return entry;
}

function checkPath(path: string): void {
  if (typeof path !== 'string' || !path.startsWith('/')) throw new InvalidArgumentError(`path must be absolute: ${String(path)}`, { path });
  if (path.includes('\0')) throw new InvalidArgumentError('path contains a NUL byte', { path });
  if (Buffer.byteLength(path) >= 4096) throw new InvalidArgumentError('path is too long', { path });
}

/** Waits until a credit counter turns positive. */
class Credit {
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

class AgentProcessImpl extends EventEmitter implements AgentProcess {
  pid = 0;
  readonly exited: Promise<ExitStatus>;
  /** Set from the ATTACH reply: older output was dropped. */
  outputTruncated = false;
  private resolveExit!: (s: ExitStatus) => void;
  private rejectExit!: (e: Error) => void;
  private readonly recvLeft = [0, INIT_WINDOW, INIT_WINDOW];
  private readonly stdinCredit = new Credit(INIT_WINDOW);
  private stdinChain: Promise<void> = Promise.resolve();
  private finished = false;
  private opened = false;
  /** Frames that arrived right after the reply, replayed once the caller had a turn to add listeners. */
  private held: Frame[] | null = null;
  /** Credit withheld while paused, per stream, given back on resume. */
  private readonly owed = [0, 0, 0];
  private paused = false;

  constructor(
    private readonly conn: Connection,
    readonly channel: number,
    private readonly onOpen: (err: Error | null, p?: AgentProcessImpl) => void,
    private readonly kind: 'EXEC' | 'ATTACH',
  ) {
    super();
    this.exited = new Promise<ExitStatus>((resolve, reject) => {
      this.resolveExit = resolve;
      this.rejectExit = reject;
    });
    this.exited.catch(() => undefined); // the caller may never look
  }

  onFrame(f: Frame): void {
    if (this.held) {
      this.held.push(f);
      return;
    }
    this.handle(f);
  }

  private release(): void {
    const frames = this.held;
    this.held = null;
    if (frames) for (const f of frames) this.handle(f);
  }

  private handle(f: Frame): void {
    if (!this.opened) {
      if (f.type === FT.ERROR) {
        this.finished = true;
        this.conn.forget(this.channel);
        this.onOpen(readError(f));
        return;
      }
      if (f.type !== FT.OK) throw new ProtocolError(`unexpected frame 0x${f.type.toString(16)} before the ${this.kind} reply`);
      const r = new PayloadReader(f.payload, this.kind);
      this.pid = r.u32();
      if (this.kind === 'ATTACH') this.outputTruncated = (r.u8() & 1) !== 0;
      this.opened = true;
      this.held = [];
      this.onOpen(null, this);
      // Output that came with the reply is delivered after the awaiting caller attached its listeners.
      setImmediate(() => this.conn.guard(() => this.release()));
      return;
    }
    switch (f.type) {
      case FT.DATA: {
        if (f.stream !== STREAM_OUT && f.stream !== STREAM_ERR) throw new ProtocolError('DATA on a bad stream');
        const left = this.recvLeft[f.stream]! - f.payload.length;
        if (left < 0) throw new ProtocolError('process output beyond the granted credit');
        this.recvLeft[f.stream] = left;
        this.safeEmit(f.stream === STREAM_OUT ? 'stdout' : 'stderr', f.payload);
        // Consumed (listeners ran synchronously): give the credit back, unless the consumer asked to pause.
        if (this.paused) this.owed[f.stream]! += f.payload.length;
        else if (!this.finished) this.grant(f.stream, f.payload.length);
        return;
      }
      case FT.WINDOW:
        if (f.stream !== STREAM_IN) return;
        this.stdinCredit.add(new PayloadReader(f.payload, 'WINDOW').u32());
        return;
      case FT.EXIT: {
        const r = new PayloadReader(f.payload, 'EXIT');
        const exitCode = r.u32();
        const sig = r.u8();
        if (r.remaining >= 1 && (r.u8() & 1) !== 0) this.outputTruncated = true;
        if (exitCode > 255 + 128) throw new ProtocolError('exit code out of range');
        this.finished = true;
        this.conn.forget(this.channel);
        // Built only when a stdin write is waiting: an Error (stack trace) per exit cost ~15 µs of every exec.
        if (this.stdinCredit.waiting) this.stdinCredit.fail(new SandboxError('process has exited', { pid: this.pid }));
        const status: ExitStatus = { exitCode };
        if (sig) status.signal = signalName(sig) ?? `SIG${sig}`;
        this.resolveExit(status);
        return;
      }
      case FT.ERROR: {
        const err = readError(f);
        this.fail(err);
        return;
      }
      default:
        return; // unknown frame types on a channel are ignored (forward compatible)
    }
  }

  private grant(stream: number, n: number): void {
    this.recvLeft[stream] = this.recvLeft[stream]! + n;
    this.conn.send(this.channel, FT.WINDOW, stream, new PayloadWriter().u32(n).finish());
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    for (const stream of [STREAM_OUT, STREAM_ERR]) {
      const n = this.owed[stream]!;
      this.owed[stream] = 0;
      if (n > 0 && !this.finished) this.conn.guard(() => this.grant(stream, n));
    }
  }

  onClose(err: Error): void {
    if (!this.opened) {
      this.finished = true;
      this.onOpen(err);
      return;
    }
    if (this.held) {
      // deliver what arrived before the loss first
      setImmediate(() => {
        try {
          this.release();
        } catch {
          /* connection already gone */
        }
        this.fail(err);
      });
      return;
    }
    this.fail(err);
  }

  private fail(err: Error): void {
    if (this.finished) return;
    this.finished = true;
    this.conn.forget(this.channel);
    this.stdinCredit.fail(err);
    this.rejectExit(err);
  }

  private safeEmit(event: string, chunk: Buffer): void {
    try {
      this.emit(event, chunk);
    } catch (e) {
      // A throwing listener is the caller's bug; surface it like EventEmitter would, outside our socket handler.
      process.nextTick(() => {
        throw e;
      });
    }
  }

  writeStdin(data: Buffer): Promise<void> {
    const p = this.stdinChain.then(() => this.pushStdin(data));
    this.stdinChain = p.catch(() => undefined);
    return p;
  }

  private async pushStdin(data: Buffer): Promise<void> {
    let off = 0;
    while (off < data.length) {
      if (this.finished) throw new SandboxError('process has exited', { pid: this.pid });
      await this.stdinCredit.wait();
      const n = Math.min(data.length - off, MAX_DATA, this.stdinCredit.value);
      this.stdinCredit.value -= n;
      this.conn.send(this.channel, FT.DATA, STREAM_IN, data.subarray(off, off + n));
      off += n;
    }
  }

  closeStdin(): Promise<void> {
    const p = this.stdinChain.then(() => {
      if (!this.finished) this.conn.send(this.channel, FT.EOF, STREAM_IN);
    });
    this.stdinChain = p.catch(() => undefined);
    return p;
  }

  async signal(signal: NodeJS.Signals | number): Promise<void> {
    const n = signalNumber(signal);
    if (this.finished) return;
    this.conn.send(this.channel, FT.SIGNAL, 0, new PayloadWriter().u32(n).finish());
  }

  /** Stop receiving this process's output; it keeps running in the sandbox (re-attach later). */
  detach(): void {
    if (this.finished) return;
    this.conn.send(this.channel, FT.CLOSE, 0);
    this.fail(new SandboxError('detached from the process', { pid: this.pid }));
  }
}

/** Channel for a request answered by one OK or ERROR. */
class SimpleRequest implements ChannelHandler {
  constructor(
    private readonly conn: Connection,
    private readonly channel: number,
    private readonly resolve: (payload: Buffer) => void,
    private readonly reject: (e: Error) => void,
    private readonly what: string,
    private readonly path?: string,
  ) {}
  onFrame(f: Frame): void {
    if (f.type === FT.OK) {
      this.conn.forget(this.channel);
      this.resolve(f.payload);
    } else if (f.type === FT.ERROR) {
      this.conn.forget(this.channel);
      this.reject(readError(f, this.path));
    } else {
      throw new ProtocolError(`unexpected frame 0x${f.type.toString(16)} in reply to ${this.what}`);
    }
  }
  onClose(err: Error): void {
    this.reject(err);
  }
}

class Connection implements AgentConnection {
  agentVersion = '';
  private readonly decoder = new FrameDecoder();
  private readonly chans = new Map<number, ChannelHandler>();
  private nextId = 1;
  private closed = false;
  private closedByUser = false;
  private closeErr: Error | undefined;
  private readonly closeListeners: Array<(err?: Error) => void> = [];
  private hello: { resolve: () => void; reject: (e: Error) => void } | undefined;

  constructor(private readonly sock: net.Socket) {
    sock.on('data', (chunk: Buffer) => this.onData(chunk));
    sock.on('error', (err) => this.shutdown(new SandboxError(`agent connection failed: ${err.message}`, { cause: err.message })));
    sock.on('close', () => this.shutdown(new SandboxError('agent connection closed')));
  }

  /** Sends HELLO and waits for the agent's. */
  handshake(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.hello = { resolve, reject };
      this.send(0, FT.HELLO, 0, new PayloadWriter().u32(PROTO_VERSION).bytes('capsule-daemon').finish());
    });
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    try {
      for (const f of this.decoder.push(chunk)) {
        this.dispatch(f);
        if (this.closed) return;
      }
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      this.shutdown(new SandboxError(e instanceof ProtocolError ? msg : `agent protocol handling failed: ${msg}`));
    }
  }

  private dispatch(f: Frame): void {
    if (f.channel === 0) {
      if (f.type !== FT.HELLO || !this.hello) throw new ProtocolError(`unexpected frame 0x${f.type.toString(16)} on channel 0`);
      const r = new PayloadReader(f.payload, 'HELLO');
      const version = r.u32();
      this.agentVersion = r.bytes(256).toString('utf8');
      const h = this.hello;
      this.hello = undefined;
      if (version !== PROTO_VERSION) {
        throw new ProtocolError(`agent speaks protocol version ${version}, this daemon speaks ${PROTO_VERSION} (agent ${this.agentVersion})`);
      }
      h.resolve();
      return;
    }
    if (this.hello) throw new ProtocolError('frame before HELLO');
    const ch = this.chans.get(f.channel);
    if (!ch) return; // late frame for a channel we already finished or cancelled
    ch.onFrame(f);
  }

  /** Run channel work outside the socket handler: a protocol violation closes the connection, never throws. */
  guard(fn: () => void): void {
    if (this.closed) return;
    try {
      fn();
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      this.shutdown(new SandboxError(e instanceof ProtocolError ? msg : `agent protocol handling failed: ${msg}`));
    }
  }

  send(channel: number, type: number, stream: number, payload?: Buffer): void {
    if (this.closed) return;
    this.sock.write(encodeFrame(channel, type, stream, payload));
  }

  forget(channel: number): void {
    this.chans.delete(channel);
  }

  /** Opens a channel with a request frame. */
  open(type: number, payload: Buffer, handler: (id: number) => ChannelHandler): void {
    if (this.closed) throw this.closeErr ?? new SandboxError('agent connection closed');
    if (payload.length > MAX_PAYLOAD) throw new InvalidArgumentError(`request too large (${payload.length} bytes, limit ${MAX_PAYLOAD})`);
    let id = this.nextId;
    while (this.chans.has(id) || id === 0) id = (id + 1) >>> 0;
    this.nextId = (id + 1) >>> 0 || 1;
    this.chans.set(id, handler(id));
    this.send(id, type, 0, payload);
  }

  private request(type: number, payload: Buffer, what: string, path?: string): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      try {
        this.open(type, payload, (id) => new SimpleRequest(this, id, resolve, reject, what, path));
      } catch (e) {
        reject(e);
      }
    });
  }

  shutdown(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.closedByUser = err === undefined;
    this.closeErr = err ?? new SandboxError('agent connection closed');
    this.sock.destroy();
    if (this.hello) {
      const h = this.hello;
      this.hello = undefined;
      h.reject(this.closeErr);
    }
    const handlers = [...this.chans.values()];
    this.chans.clear();
    for (const h of handlers) {
      try {
        h.onClose(this.closeErr);
      } catch {
        /* never let one channel break the shutdown */
      }
    }
    for (const l of this.closeListeners.splice(0)) {
      try {
        l(err);
      } catch (e) {
        process.nextTick(() => {
          throw e;
        });
      }
    }
  }

  // ---- AgentConnection ----

  async ping(): Promise<{ version: string }> {
    const r = await this.request(FT.PING, Buffer.alloc(0), 'PING');
    if (r.length > 256) throw new SandboxError('agent version string too long');
    return { version: r.toString('utf8') };
  }

  exec(req: ExecRequest): Promise<AgentProcess> {
    try {
      return this.openProcess(FT.EXEC, this.encodeExec(req), 'EXEC');
    } catch (e) {
      return Promise.reject(e);
    }
  }

  private encodeExec(req: ExecRequest): Buffer {
    if (!Array.isArray(req.argv) || req.argv.length === 0 || !req.argv[0]) throw new InvalidArgumentError('argv must be a non-empty array');
    const flags = req.stdin ? EXEC_STDIN_PIPE : req.holdReply ? EXEC_HOLD_REPLY : 0;
    const w = new PayloadWriter().u8(flags).bytes(req.cwd ?? '').bytes(req.user ?? '');
    w.u32(req.argv.length);
    for (const a of req.argv) {
      if (a.includes('\0')) throw new InvalidArgumentError('argv contains a NUL byte');
      w.bytes(a);
    }
    const env = Object.entries(req.env ?? {});
    w.u32(env.length);
    for (const [k, v] of env) {
      if (!k || k.includes('=') || k.includes('\0') || String(v).includes('\0')) throw new InvalidArgumentError(`invalid environment variable name or value: ${k}`);
      w.bytes(`${k}=${v}`);
    }
    return w.finish();
  }

  attach(pid: number): Promise<AgentProcess> {
    if (!Number.isInteger(pid) || pid <= 0 || pid > 0xffffffff) return Promise.reject(new InvalidArgumentError(`invalid pid ${pid}`));
    return this.openProcess(FT.ATTACH, new PayloadWriter().u32(pid).finish(), 'ATTACH');
  }

  private openProcess(type: number, payload: Buffer, kind: 'EXEC' | 'ATTACH'): Promise<AgentProcess> {
    return new Promise((resolve, reject) => {
      try {
        this.open(type, payload, (id) => new AgentProcessImpl(this, id, (err, p) => (err ? reject(err) : resolve(p!)), kind));
      } catch (e) {
        reject(e);
      }
    });
  }

  async listProcesses(opts?: { includeExited?: boolean }): Promise<ProcessInfo[]> {
    const r = new PayloadReader(await this.request(FT.PS, Buffer.alloc(0), 'PS'), 'PS');
    const count = r.u32();
    r.u8(); // truncated flag
    if (count > 100_000) throw new SandboxError('agent process list is implausibly long');
    const out: ProcessInfo[] = [];
    for (let i = 0; i < count; i++) {
      const pid = r.u32();
      const exited = r.u8() !== 0;
      const exitCode = r.u32();
      const argc = r.u32();
      if (argc > 4096) throw new SandboxError('agent process list: bad argv count');
      const argv: string[] = [];
      for (let j = 0; j < argc; j++) argv.push(r.bytes(4096).toString('utf8'));
      if (exited && !opts?.includeExited) continue;
      out.push(opts?.includeExited ? { pid, argv, exited, ...(exited ? { exitCode } : {}) } : { pid, argv });
    }
    return out;
  }

  readFile(path: string, opts?: { maxBytes?: number }): Promise<{ size: number; stream: Readable }> {
    const maxBytes = opts?.maxBytes;
    return new Promise((resolve, reject) => {
      try {
        checkPath(path);
        this.open(FT.READ, new PayloadWriter().u64(maxBytes ?? 0).bytes(path).finish(), (id) =>
          new ReadChannel(this, id, path, maxBytes, resolve, reject));
      } catch (e) {
        reject(e);
      }
    });
  }

  writeFile(path: string, data: Readable | Buffer, opts?: { mode?: number }): Promise<{ size: number }> {
    const mode = opts?.mode ?? 0o644;
    return new Promise((resolve, reject) => {
      try {
        checkPath(path);
        if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw new InvalidArgumentError(`invalid mode ${mode}`);
        this.open(FT.WRITE, new PayloadWriter().u32(mode).bytes(path).finish(), (id) => new WriteChannel(this, id, path, data, resolve, reject));
      } catch (e) {
        reject(e);
      }
    });
  }

  list(path: string, opts?: { limit?: number }): Promise<{ entries: FileEntry[]; truncated: boolean }> {
    const want = opts?.limit !== undefined && Number.isFinite(opts.limit) ? Math.floor(opts.limit) : DEFAULT_LIST_LIMIT;
    const limit = Math.min(Math.max(1, want), MAX_LIST_LIMIT);
    return new Promise((resolve, reject) => {
      try {
        checkPath(path);
        this.open(FT.LIST, new PayloadWriter().u32(limit).bytes(path).finish(), (id) => new ListChannel(this, id, path, limit, resolve, reject));
      } catch (e) {
        reject(e);
      }
    });
  }

  async stat(path: string): Promise<FileEntry> {
    checkPath(path);
    const r = new PayloadReader(await this.request(FT.STAT, new PayloadWriter().bytes(path).finish(), 'STAT', path), 'STAT');
    try {
      return readEntry(r, path, false);
    } catch (e) {
      this.shutdown(new SandboxError(e instanceof Error ? e.message : String(e)));
      throw this.closeErr!;
    }
  }

  async mkdir(path: string): Promise<void> {
    checkPath(path);
    await this.request(FT.MKDIR, new PayloadWriter().bytes(path).finish(), 'MKDIR', path);
  }

  async remove(path: string, opts?: { recursive?: boolean }): Promise<void> {
    checkPath(path);
    await this.request(FT.REMOVE, new PayloadWriter().u8(opts?.recursive ? 1 : 0).bytes(path).finish(), 'REMOVE', path);
  }

  async rename(from: string, to: string): Promise<void> {
    checkPath(from);
    checkPath(to);
    await this.request(FT.RENAME, new PayloadWriter().bytes(from).bytes(to).finish(), 'RENAME', from);
  }

  close(): void {
    this.shutdown();
  }

  onClose(listener: (err?: Error) => void): void {
    if (this.closed) {
      const err = this.closeErr;
      queueMicrotask(() => listener(this.closedByUser ? undefined : err));
      return;
    }
    this.closeListeners.push(listener);
  }
}

/**
 * File reads keep up to this much in flight (the protocol's initial 256 KiB
 * plus one grant at the start). With only 256 KiB the agent stalled for a
 * WINDOW round trip every few frames; this is also the most a READ channel
 * holds in daemon memory besides the stream's own buffer, whatever the consumer does.
 */
export const READ_WINDOW = 1024 * 1024;
/** Credit goes back in batches of this size, not per 64 KiB frame: a WINDOW is a write to the agent and a wakeup for it. */
export const READ_GRANT_BATCH = READ_WINDOW / 4;

class ReadChannel implements ChannelHandler {
  private stream: Readable | undefined;
  private recvLeft = INIT_WINDOW;
  private heldGrant = 0;
  private received = 0;
  private size = 0;
  private done = false;

  constructor(
    private readonly conn: Connection,
    private readonly id: number,
    private readonly path: string,
    private readonly maxBytes: number | undefined,
    private readonly resolve: (v: { size: number; stream: Readable }) => void,
    private readonly reject: (e: Error) => void,
  ) {}

  onFrame(f: Frame): void {
    if (!this.stream) {
      if (f.type === FT.ERROR) {
        this.conn.forget(this.id);
        this.reject(readError(f, this.path));
        return;
      }
      if (f.type !== FT.OK) throw new ProtocolError('unexpected frame before the READ reply');
      this.size = new PayloadReader(f.payload, 'READ').u64();
      if (this.maxBytes !== undefined && this.size > this.maxBytes) {
        this.cancel();
        this.reject(new PayloadTooLargeError(`${this.path} is ${this.size} bytes, more than the limit of ${this.maxBytes}`, { path: this.path, size: this.size, maxBytes: this.maxBytes }));
        return;
      }
      this.stream = new Readable({
        highWaterMark: INIT_WINDOW,
        read: () => this.release(),
        destroy: (err, cb) => {
          if (!this.done) this.cancel();
          cb(err);
        },
      });
      this.recvLeft += READ_WINDOW - INIT_WINDOW;
      this.conn.send(this.id, FT.WINDOW, STREAM_OUT, new PayloadWriter().u32(READ_WINDOW - INIT_WINDOW).finish());
      this.resolve({ size: this.size, stream: this.stream });
      return;
    }
    switch (f.type) {
      case FT.DATA: {
        if (f.stream !== STREAM_OUT) throw new ProtocolError('READ data on a bad stream');
        this.recvLeft -= f.payload.length;
        if (this.recvLeft < 0) throw new ProtocolError('file data beyond the granted credit');
        this.received += f.payload.length;
        if (this.maxBytes !== undefined && this.received > this.maxBytes) throw new ProtocolError('file data beyond the requested limit');
        this.heldGrant += f.payload.length;
        // Grant back only what the consumer has taken: push() returning false means it has not.
        if (this.stream.push(f.payload)) this.release();
        return;
      }
      case FT.END:
        this.done = true;
        this.conn.forget(this.id);
        this.stream.push(null);
        return;
      case FT.ERROR:
        this.done = true;
        this.conn.forget(this.id);
        this.stream.destroy(readError(f, this.path));
        return;
      default:
        return;
    }
  }

  /**
   * Return consumed credit to the agent. Batching cannot stall the agent:
   * recvLeft + heldGrant is always READ_WINDOW, so when the agent is out of
   * credit the held amount is the whole window, well past the batch size.
   */
  private release(): void {
    if (this.done || this.heldGrant < READ_GRANT_BATCH) return;
    const n = this.heldGrant;
    this.heldGrant = 0;
    this.recvLeft += n;
    this.conn.send(this.id, FT.WINDOW, STREAM_OUT, new PayloadWriter().u32(n).finish());
  }

  private cancel(): void {
    this.done = true;
    this.conn.forget(this.id);
    this.conn.send(this.id, FT.CLOSE, 0);
  }

  onClose(err: Error): void {
    this.done = true;
    if (this.stream) this.stream.destroy(err);
    else this.reject(err);
  }
}

class WriteChannel implements ChannelHandler {
  private readonly credit = new Credit(INIT_WINDOW);
  private opened = false;
  private finished = false;
  private resolveEnd: ((size: number) => void) | undefined;

  constructor(
    private readonly conn: Connection,
    private readonly id: number,
    private readonly path: string,
    private readonly data: Readable | Buffer,
    private readonly resolve: (v: { size: number }) => void,
    private readonly reject: (e: Error) => void,
  ) {}

  onFrame(f: Frame): void {
    switch (f.type) {
      case FT.OK:
        if (this.opened) throw new ProtocolError('second OK on a WRITE channel');
        this.opened = true;
        void this.pump();
        return;
      case FT.WINDOW:
        if (f.stream === STREAM_IN) this.credit.add(new PayloadReader(f.payload, 'WINDOW').u32());
        return;
      case FT.END: {
        if (!this.opened || !this.resolveEnd) throw new ProtocolError('WRITE ended before all data was sent');
        const size = new PayloadReader(f.payload, 'END').u64();
        this.finished = true;
        this.conn.forget(this.id);
        this.resolveEnd(size);
        return;
      }
      case FT.ERROR:
        this.fail(readError(f, this.path), false);
        return;
      default:
        return;
    }
  }

  onClose(err: Error): void {
    this.fail(err, false);
  }

  private fail(err: Error, cancel: boolean): void {
    if (this.finished) return;
    this.finished = true;
    this.conn.forget(this.id);
    if (cancel) this.conn.send(this.id, FT.CLOSE, 0);
    this.credit.fail(err);
    // The source belongs to the caller (often an HTTP request): stop reading it, but let the caller
    // decide how to end it, so an error answer can still reach the client.
    if (!Buffer.isBuffer(this.data)) this.data.pause();
    this.reject(err);
  }

  private async sendChunk(buf: Buffer): Promise<number> {
    let off = 0;
    while (off < buf.length) {
      await this.credit.wait();
      if (this.finished) throw new SandboxError('write aborted');
      const n = Math.min(buf.length - off, MAX_DATA, this.credit.value);
      this.credit.value -= n;
      this.conn.send(this.id, FT.DATA, STREAM_IN, buf.subarray(off, off + n));
      off += n;
    }
    return buf.length;
  }

  private async pump(): Promise<void> {
    let sent = 0;
    try {
      if (Buffer.isBuffer(this.data)) {
        sent += await this.sendChunk(this.data);
      } else {
        for await (const chunk of this.data) {
          if (this.finished) return;
          const buf = Buffer.isBuffer(chunk) ? chunk : typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk as Uint8Array);
          sent += await this.sendChunk(buf);
        }
      }
      if (this.finished) return;
      const size = await new Promise<number>((resolve) => {
        this.resolveEnd = resolve;
        this.conn.send(this.id, FT.EOF, STREAM_IN);
      });
      if (size !== sent) throw new SandboxError(`agent wrote ${size} bytes of ${sent}`, { path: this.path });
      this.resolve({ size });
    } catch (e) {
      const err = e instanceof CapsuleError ? e : new SandboxError(`writing ${this.path} failed: ${e instanceof Error ? e.message : String(e)}`, { path: this.path });
      this.fail(err, true);
    }
  }
}

class ListChannel implements ChannelHandler {
  private opened = false;
  private readonly entries: FileEntry[] = [];
  private recvLeft = INIT_WINDOW;

  constructor(
    private readonly conn: Connection,
    private readonly id: number,
    private readonly path: string,
    private readonly limit: number,
    private readonly resolve: (v: { entries: FileEntry[]; truncated: boolean }) => void,
    private readonly reject: (e: Error) => void,
  ) {}

  onFrame(f: Frame): void {
    if (!this.opened) {
      if (f.type === FT.ERROR) {
        this.conn.forget(this.id);
        this.reject(readError(f, this.path));
        return;
      }
      if (f.type !== FT.OK) throw new ProtocolError('unexpected frame before the LIST reply');
      this.opened = true;
      return;
    }
    switch (f.type) {
      case FT.ENTRIES: {
        this.recvLeft -= f.payload.length;
        if (this.recvLeft < 0) throw new ProtocolError('directory entries beyond the granted credit');
        const r = new PayloadReader(f.payload, 'ENTRIES');
        const count = r.u32();
        if (this.entries.length + count > this.limit) throw new ProtocolError('more directory entries than the requested limit');
        for (let i = 0; i < count; i++) this.entries.push(readEntry(r, this.path, true));
        r.done();
        this.recvLeft += f.payload.length;
        this.conn.send(this.id, FT.WINDOW, STREAM_OUT, new PayloadWriter().u32(f.payload.length).finish());
        return;
      }
      case FT.END: {
        const truncated = new PayloadReader(f.payload, 'END').u8() !== 0;
        this.conn.forget(this.id);
        this.resolve({ entries: this.entries, truncated });
        return;
      }
      case FT.ERROR:
        this.conn.forget(this.id);
        this.reject(readError(f, this.path));
        return;
      default:
        return;
    }
  }

  onClose(err: Error): void {
    this.reject(err);
  }
}

/** Connect to an agent (a unix socket path is taken as a unix endpoint) and complete the HELLO exchange. */
export function connectAgent(endpoint: AgentEndpoint | string, opts?: ConnectOptions): Promise<AgentConnection> {
  const ep: AgentEndpoint = typeof endpoint === 'string' ? { kind: 'unix', path: endpoint } : endpoint;
  if (ep.kind !== 'unix') {
    return Promise.reject(new SandboxError(`this daemon cannot reach an agent at ${describeEndpoint(ep)}: only unix socket endpoints are implemented`, { endpoint: ep }));
  }
  const socketPath = ep.path;
  const timeoutMs = opts?.timeoutMs ?? 5000;
  return new Promise<AgentConnection>((resolve, reject) => {
    if (opts?.signal?.aborted) {
      reject(new SandboxError('connecting to the agent was aborted', { socketPath }));
      return;
    }
    const sock = net.createConnection({ path: socketPath });
    const conn = new Connection(sock);
    let settled = false;
    const finish = (err: Error | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      opts?.signal?.removeEventListener('abort', onAbort);
      if (err) {
        conn.shutdown(err);
        reject(err);
      } else {
        resolve(conn);
      }
    };
    const onAbort = (): void => finish(new SandboxError('connecting to the agent was aborted', { socketPath }));
    const timer = setTimeout(
      () => finish(new TimeoutError(`agent at ${socketPath} did not answer within ${timeoutMs} ms`, { socketPath })),
      timeoutMs,
    );
    opts?.signal?.addEventListener('abort', onAbort, { once: true });
    sock.once('connect', () => {
      conn.handshake().then(
        () => finish(null),
        (err: Error) => finish(err instanceof CapsuleError ? err : new SandboxError(err.message, { socketPath })),
      );
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      finish(new SandboxError(`cannot connect to the agent at ${socketPath}: ${err.code ?? err.message}`, { socketPath, errno: err.code }));
    });
    sock.once('close', () => finish(new SandboxError(`agent at ${socketPath} closed the connection during the handshake`, { socketPath })));
  });
}

export type { AgentConnection, AgentProcess } from './types.js';
