/**
 * The connection multiplexer: one unix stream to an agent carries many
 * channels. It owns the socket, the frame decoder, the handshake and the
 * channel table; what each request does lives in its channel module
 * (process.ts, file-read.ts, file-write.ts, list.ts, request.ts).
 *
 * Everything the agent sends is hostile: frames are bounded by the decoder,
 * fields by the channel modules, and any violation closes the connection
 * with a SandboxError instead of throwing into the caller.
 */
import net from 'node:net';
import type { Readable } from 'node:stream';

import { CapsuleError, InvalidArgumentError, SandboxError, TimeoutError } from '../errors/index.js';
import type { ChannelHandler, ChannelHost } from './channel.js';
import { readFile, type ReadResult } from './file-read.js';
import { writeFile } from './file-write.js';
import { AgentFeatureError, AgentVersionError, type AgentIdentity } from './errors.js';
import { encodeFrame, encodeHeader, FrameDecoder, FT, MAX_DATA, MAX_PAYLOAD, PROTO_MAJOR, PROTO_MINOR, ProtocolError, type Frame } from './frames.js';
import { ALL_FEATURES, decodeHello, encodeHello, versionString, type AgentFeature, type AgentProtocol } from './protocol.js';
import { listDir, type Listing } from './list.js';
import { attachProcess, execProcess } from './process.js';
import * as req from './request.js';
import { describeEndpoint, type AgentConnection, type AgentEndpoint, type AgentProcess, type AgentWatch, type ExecRequest, type FileEntry, type WriteFileOptions } from './types.js';
import { watchDir } from './watch.js';

export interface ConnectOptions {
  /** How long to wait for the socket and the agent's HELLO (default 5000 ms). */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** The sandbox the agent serves, named in error messages. */
  sandboxId?: string;
  /** Features to offer (default: all this daemon knows). Tests use it to act as an older daemon. */
  offer?: readonly AgentFeature[];
}

const NO_FEATURES: ReadonlySet<AgentFeature> = new Set();

/**
 * Every agent connection reads into this one buffer (`onread`): a read takes up to its size in one
 * syscall, where Node's default reads 64 KiB into a fresh allocation each time, and the decoder copies
 * out each byte it keeps exactly once. One buffer serves all connections because the callback is
 * synchronous and the decoder keeps no reference into it (transient chunks). Allocated at first use.
 */
const READ_BUFFER_BYTES = 256 * 1024;
let sharedReadBuffer: Buffer | undefined;
function readBuffer(): Buffer {
  return (sharedReadBuffer ??= Buffer.allocUnsafe(READ_BUFFER_BYTES));
}

/** Payloads from this size on leave as header + payload in one writev instead of being copied into one frame. */
const GATHER_MIN = 16 * 1024;

class Connection implements AgentConnection, ChannelHost {
  agentVersion = '';
  protocol: AgentProtocol = { major: 0, minor: 0, features: NO_FEATURES };
  maxData = MAX_DATA;
  private readonly offered: ReadonlySet<AgentFeature>;
  private readonly decoder = new FrameDecoder();
  private readonly chans = new Map<number, ChannelHandler>();
  private nextId = 1;
  private closed = false;
  private closedByUser = false;
  private closeErr: Error | undefined;
  private readonly closeListeners: Array<(err?: Error) => void> = [];
  private hello: { resolve: () => void; reject: (e: Error) => void } | undefined;

  socketFd(): number | undefined {
    // Node keeps the descriptor on the handle; there is no public accessor.
    const fd = (this.sock as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
    return typeof fd === 'number' && fd >= 0 ? fd : undefined;
  }

  constructor(
    private readonly sock: net.Socket,
    private readonly sandboxId: string | undefined,
    offer: readonly AgentFeature[],
  ) {
    this.offered = new Set(offer);
    sock.on('error', (err) => this.shutdown(new SandboxError(`agent connection failed: ${err.message}`, { cause: err.message })));
    sock.on('close', () => this.shutdown(new SandboxError('agent connection closed')));
  }

  /** Sends HELLO and waits for the agent's. */
  handshake(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.hello = { resolve, reject };
      this.send(0, FT.HELLO, 0, encodeHello(this.offered));
    });
  }

  /** Bytes read from the socket; `transient`: chunk is the shared read buffer, reused after this call. */
  onData(chunk: Buffer, transient: boolean): void {
    if (this.closed) return;
    try {
      for (const f of this.decoder.push(chunk, transient)) {
        this.dispatch(f);
        if (this.closed) return;
      }
    } catch (e) {
      this.violation(e);
    }
  }

  private violation(e: unknown): void {
    const msg = e instanceof Error ? e.message : String(e);
    this.shutdown(new SandboxError(e instanceof ProtocolError ? msg : `agent protocol handling failed: ${msg}`));
  }

  private dispatch(f: Frame): void {
    if (f.channel === 0) {
      if (f.type !== FT.HELLO || !this.hello) throw new ProtocolError(`unexpected frame 0x${f.type.toString(16)} on channel 0`);
      const hello = decodeHello(f.payload, this.offered);
      this.agentVersion = hello.agentVersion;
      this.protocol = { major: hello.major, minor: hello.minor, features: hello.features };
      if (hello.major !== PROTO_MAJOR) {
        // Nothing else of another major can be read safely: say who it is and hang up.
        this.shutdown(new AgentVersionError(this.identity(), versionString({ major: PROTO_MAJOR, minor: PROTO_MINOR }), PROTO_MAJOR));
        return;
      }
      this.maxData = this.supports('large-data') ? MAX_PAYLOAD : MAX_DATA;
      const h = this.hello;
      this.hello = undefined;
      h.resolve();
      return;
    }
    if (this.hello) throw new ProtocolError('frame before HELLO');
    const ch = this.chans.get(f.channel);
    if (!ch) return; // late frame for a channel we already finished or cancelled
    ch.onFrame(f);
  }

  private identity(): AgentIdentity {
    return { sandboxId: this.sandboxId, agentVersion: this.agentVersion, protocol: versionString(this.protocol) };
  }

  // ---- ChannelHost ----

  supports(feature: AgentFeature): boolean {
    return this.protocol.features.has(feature);
  }

  require(feature: AgentFeature): void {
    if (!this.supports(feature)) throw new AgentFeatureError(this.identity(), feature);
  }

  guard(fn: () => void): void {
    if (this.closed) return;
    try {
      fn();
    } catch (e) {
      this.violation(e);
    }
  }

  send(channel: number, type: number, stream: number, payload?: Buffer): void {
    if (this.closed) return;
    if (!payload || payload.length < GATHER_MIN) {
      this.sock.write(encodeFrame(channel, type, stream, payload));
      return;
    }
    this.sock.cork();
    this.sock.write(encodeHeader(channel, type, stream, payload.length));
    this.sock.write(payload);
    this.sock.uncork();
  }

  /** One DATA frame from several pieces, without joining them: one writev. */
  sendGather(channel: number, type: number, stream: number, parts: readonly Buffer[], length: number): void {
    if (this.closed) return;
    this.sock.cork();
    this.sock.write(encodeHeader(channel, type, stream, length));
    for (const p of parts) this.sock.write(p);
    this.sock.uncork();
  }

  forget(channel: number): void {
    this.chans.delete(channel);
  }

  open(type: number, payload: Buffer, handler: (id: number) => ChannelHandler): void {
    if (this.closed) throw this.closeErr ?? new SandboxError('agent connection closed');
    if (payload.length > MAX_PAYLOAD) throw new InvalidArgumentError(`request too large (${payload.length} bytes, limit ${MAX_PAYLOAD})`);
    let id = this.nextId;
    while (this.chans.has(id) || id === 0) id = (id + 1) >>> 0;
    this.nextId = (id + 1) >>> 0 || 1;
    this.chans.set(id, handler(id));
    this.send(id, type, 0, payload);
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

  ping(): Promise<{ version: string }> {
    return req.ping(this);
  }

  exec(r: ExecRequest): Promise<AgentProcess> {
    return execProcess(this, r);
  }

  attach(pid: number): Promise<AgentProcess> {
    return attachProcess(this, pid);
  }

  watch(path: string, opts?: { recursive?: boolean }): Promise<AgentWatch> {
    return watchDir(this, path, opts);
  }

  listProcesses(opts?: { includeExited?: boolean }): Promise<req.ProcessInfo[]> {
    return req.listProcesses(this, opts);
  }

  readFile(path: string, opts?: { maxBytes?: number }): Promise<ReadResult> {
    return readFile(this, path, opts);
  }

  writeFile(path: string, data: Readable | Buffer, opts?: WriteFileOptions): Promise<{ size: number }> {
    return writeFile(this, path, data, opts);
  }

  list(path: string, opts?: { limit?: number; xattrPrefix?: string }): Promise<Listing> {
    return listDir(this, path, opts);
  }

  stat(path: string, opts?: { xattrPrefix?: string }): Promise<FileEntry> {
    return req.stat(this, path, opts);
  }

  mkdir(path: string): Promise<void> {
    return req.mkdir(this, path);
  }

  remove(path: string, opts?: { recursive?: boolean }): Promise<void> {
    return req.remove(this, path, opts);
  }

  rename(from: string, to: string): Promise<void> {
    return req.rename(this, from, to);
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
    let conn: Connection | undefined;
    const sock = net.createConnection({
      path: socketPath,
      onread: {
        buffer: readBuffer,
        callback: (n: number, buf: Uint8Array): boolean => {
          conn?.onData(Buffer.from(buf.buffer, buf.byteOffset, n), true);
          return true;
        },
      },
    });
    conn = new Connection(sock, opts?.sandboxId, opts?.offer ?? ALL_FEATURES);
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
    sock.once('close', () => finish(new SandboxError(`agent at ${socketPath} closed the connection during the handshake (an agent of another protocol version does that)`, { socketPath })));
  });
}
