/**
 * Large uploads off node:http's body path (ADR 0016, "File write: a raw body into the agent's file").
 *
 * node:http reads a socket into a new 64 KiB buffer per read, and its parser copies every body chunk
 * into another new one: two fresh allocations per 64 KiB. On this kind of host that allocation, not the
 * copying, was most of an upload's cost (the same 100 MB read into one reused buffer took a third of the
 * CPU, and did not slow down when other processes churned memory). A client that knows its body's
 * length may therefore ask for the raw path: `Connection: Upgrade` and `Upgrade: capsule-upload` on the
 * same `PUT /v1/sandboxes/:id/files` request. node:http hands over the socket after the headers; the
 * request is then routed through Fastify as any other (same authentication, limits, validation, handler
 * and answer), and the body it sees is an UploadBody:
 *
 * - when the sandbox's runtime lets the daemon write the agent's temp file itself (the file handoff),
 *   the body fills that file from a few reused 1 MiB buffers, each read going to `write(2)` as it is;
 * - otherwise it is an ordinary stream, relayed to the agent as usual.
 *
 * The answer is a normal HTTP response (never 101), after which the connection closes. A client that
 * did not ask sees nothing of this.
 *
 * Moving the socket's handle into a socket that reads with `onread` relies on net's `handle` and
 * `pauseOnCreate` constructor options and `_handle`, which Node does not document; where they are
 * missing (another Node, a TLS socket) the request is refused with a clear error before anything is
 * read, and the SDK sends it again as a plain upload (test/integration/api/raw-upload.test.ts and
 * test/unit/sdk/raw-upload.test.ts pin both sides). The taken-over socket is no longer one of the server's
 * connections: a daemon shutting down does not wait for it.
 */
import fs from 'node:fs';
import http, { type IncomingMessage } from 'node:http';
import net from 'node:net';
import { Readable } from 'node:stream';
import type { FastifyInstance } from 'fastify';

import { SandboxError } from '../errors/index.js';
import { DIRECT_FILL, fillError, type DirectFill, type Fill } from '../agent/file-fill.js';

export const RAW_UPLOAD_PROTOCOL = 'capsule-upload';

/** One read's buffer. */
const SLAB_BYTES = 1 << 20;
/** Stream mode: a slab with less room than this left is replaced before the next read. */
const MIN_READ_ROOM = 64 * 1024;
/** Stream mode: body bytes buffered for the route before the socket is paused. */
const HIGH_WATER = 4 * 1024 * 1024;
/** Fill mode: writes in flight before the socket is paused (each holds one slab). */
const MAX_WRITES = 3;
/** A raw upload's connection that moves no byte for this long is closed (its temp file then goes too). */
const IDLE_MS = 5 * 60_000;

/** The one route that takes a raw body. */
const UPLOAD_PATH = /^\/v1\/sandboxes\/[^/]+\/files$/;

const RAW_BODY = Symbol('capsule.rawUploadBody');
type WithRawBody = IncomingMessage & { [RAW_BODY]?: UploadBody };

export function isRawUpload(req: IncomingMessage): boolean {
  return (req.headers.upgrade ?? '').toLowerCase() === RAW_UPLOAD_PROTOCOL;
}

/** The body of a raw upload, for the route to use instead of `req.body`; undefined for any other request. */
export function rawUploadBody(req: IncomingMessage): Readable | undefined {
  return (req as WithRawBody)[RAW_BODY];
}

/** Answers before routing: a raw upload must say its length and may not be chunked. */
function refuse(socket: net.Socket, status: number, code: string, message: string): void {
  const body = JSON.stringify({ error: { code, message } });
  socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
}

/** Takes over the upgraded socket of a raw upload and routes its request through `app`. */
export function takeRawUpload(app: FastifyInstance, req: IncomingMessage, old: net.Socket, head: Buffer): void {
  old.on('error', () => undefined);
  const lengthHeader = req.headers['content-length'];
  const length = lengthHeader !== undefined && /^\d{1,15}$/.test(lengthHeader) ? Number(lengthHeader) : NaN;
  if (!Number.isSafeInteger(length) || req.headers['transfer-encoding'] !== undefined) {
    refuse(old, 400, 'invalid_argument', `an ${RAW_UPLOAD_PROTOCOL} request needs a Content-Length and no Transfer-Encoding`);
    return;
  }
  // Only the upload route reads the raw body; any other route would wait for a body node:http no longer gives.
  if (req.method !== 'PUT' || !UPLOAD_PATH.test((req.url ?? '').split('?')[0]!)) {
    refuse(old, 400, 'invalid_argument', `${RAW_UPLOAD_PROTOCOL} is for PUT /v1/sandboxes/{id}/files only`);
    return;
  }
  const body = new UploadBody(length, head);
  const socket = detach(old, body);
  if (!socket) {
    refuse(old, 400, 'invalid_argument', `this connection cannot take an ${RAW_UPLOAD_PROTOCOL} request; send a plain PUT`);
    return;
  }
  body.attach(socket);
  socket.setTimeout(IDLE_MS, () => socket.destroy());
  (req as WithRawBody)[RAW_BODY] = body;
  const res = new http.ServerResponse(req);
  res.shouldKeepAlive = false; // nothing reads a next request from this socket
  res.assignSocket(socket);
  res.once('finish', () => {
    body.release();
    socket.end();
    // Read (and drop) what the client still sends (an upload refused early), so its close is seen; give up
    // after a grace period.
    body.drain();
    setTimeout(() => socket.destroy(), 5000).unref();
  });
  socket.once('close', () => {
    if (!res.writableFinished) res.destroy();
  });
  try {
    app.routing(req, res);
  } catch {
    socket.destroy();
  }
}

/**
 * The socket's handle moved into a socket that reads into the body's buffers (`onread`), paused until
 * the body knows how it will be read; undefined where the handle is not a plain stream handle. The old
 * socket object is destroyed without its handle, so the server's connection count still drops.
 */
function detach(old: net.Socket, body: UploadBody): net.Socket | undefined {
  const o = old as unknown as { _handle: { readStop?: () => void; reading?: boolean } | null };
  const handle = o._handle;
  // A TLS socket's handle carries ciphertext: only plain TCP (or a local socket) is taken over.
  if (!handle || typeof handle.readStop !== 'function' || (old as { encrypted?: boolean }).encrypted) return undefined;
  // Cached on the old socket before its handle goes: Fastify reads the peer from req.socket.
  void old.remoteAddress;
  void old.remotePort;
  handle.readStop();
  handle.reading = false; // net's own flag: the new socket starts reading only when asked
  o._handle = null;
  old.destroy();
  const socket = new net.Socket({
    handle,
    readable: true,
    writable: true,
    pauseOnCreate: true,
    onread: {
      buffer: () => body.readInto(),
      callback: (n: number) => {
        body.took(n);
        return true;
      },
    },
  } as unknown as net.SocketConstructorOpts);
  socket.on('error', () => undefined);
  return socket;
}

/**
 * Exactly Content-Length bytes from the socket, read one of two ways, chosen by the first consumer: as a
 * stream (`data` events; each read a view of a fresh slab, no copy), or straight into a file descriptor
 * (DIRECT_FILL: reused slabs, each read written as it is). An error if the socket ends first.
 */
class UploadBody extends Readable implements DirectFill {
  /** Body bytes not yet read from the socket. */
  private left: number;
  private socket: net.Socket | undefined;
  private mode: 'undecided' | 'stream' | 'fill' | 'done' = 'undecided';
  /** Bytes read with the headers, not yet given to either mode. */
  private head: Buffer | undefined;
  /** The buffer the socket reads into next (the last one readInto() gave). */
  private given: Buffer | undefined;
  // Stream mode: reads go back to back into a slab, a fresh one when it is nearly full.
  private slab: Buffer | undefined;
  private slabOff = 0;
  // Fill mode.
  private fill: FillState | undefined;
  // After the answer: whatever still comes lands here and is dropped.
  private scratch: Buffer | undefined;

  constructor(private readonly length: number, head: Buffer) {
    super({ highWaterMark: HIGH_WATER });
    this.head = head.length > 0 ? head.subarray(0, Math.min(head.length, length)) : undefined;
    this.left = length - (this.head?.length ?? 0);
    // A cut-off upload is reported to whoever reads the body; a route that failed before reading it
    // must not turn that into an uncaught 'error'.
    this.on('error', () => undefined);
  }

  attach(socket: net.Socket): void {
    this.socket = socket;
    const cut = () => {
      if (this.left === 0 || this.mode === 'done') return;
      const err = new Error(`the upload was cut off with ${this.left} bytes still to come`);
      if (this.fill) this.fill.fail(err);
      else if (!this.destroyed) this.destroy(err);
    };
    socket.once('end', cut);
    socket.once('close', cut);
  }

  /** The buffer the next socket read lands in. */
  readInto(): Buffer {
    if (this.mode === 'done') this.given = this.scratch ??= Buffer.allocUnsafeSlow(MIN_READ_ROOM);
    else if (this.fill) this.given = this.fill.room();
    else {
      if (!this.slab || this.slab.length - this.slabOff < MIN_READ_ROOM) {
        this.slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
        this.slabOff = 0;
      }
      this.given = this.slab.subarray(this.slabOff);
    }
    return this.given;
  }

  /** `n` bytes arrived at the start of the buffer readInto() last gave. */
  took(n: number): void {
    const landed = this.given;
    if (this.mode === 'done' || n <= 0 || !landed) return;
    const keep = Math.min(n, this.left); // what follows the body is not ours
    this.left -= keep;
    if (this.fill) {
      // The first read after the switch may have landed in a stream slab handed out before it.
      if (this.fill.owns(landed)) this.fill.took(keep);
      else this.fill.write(landed.subarray(0, keep));
      if (this.left === 0) this.socket?.pause();
      return;
    }
    if (landed.buffer === this.slab?.buffer) this.slabOff += n;
    if (keep === 0) return;
    const more = this.push(landed.subarray(0, keep));
    if (this.left === 0) {
      this.push(null);
      this.socket?.pause();
    } else if (!more) {
      this.socket?.pause();
    }
  }

  override _read(): void {
    if (this.mode === 'undecided') {
      this.mode = 'stream';
      const head = this.head;
      this.head = undefined;
      if (head) this.push(head);
      if (this.left === 0) {
        this.push(null);
        return;
      }
    }
    if (this.mode === 'stream' && this.left > 0) this.socket?.resume();
  }

  /** DIRECT_FILL: the body into `fd` (which this takes over and closes), if nothing has read it yet. */
  [DIRECT_FILL](fd: number, path: string): Fill | undefined {
    if (this.mode !== 'undecided' || !this.socket) return undefined;
    this.mode = 'fill';
    const state = new FillState(fd, path, this.length, this.socket, () => (this.mode = 'done'));
    this.fill = state;
    const head = this.head;
    this.head = undefined;
    if (head) state.write(head);
    if (this.left > 0) this.socket.resume();
    state.endIfDone();
    return state;
  }

  /** The answer is out: stop filling (a refused upload's bytes are not written). */
  release(): void {
    if (this.fill && !this.fill.over) this.fill.fail(new SandboxError('the upload was answered before its end'));
  }

  /** After the answer: read and drop whatever still comes, so the client's close is seen. */
  drain(): void {
    this.mode = 'done';
    this.socket?.resume();
  }
}

/**
 * Fill mode: reads land in `current` at `used`; a slab that is full (or holds the last bytes) goes to
 * `write(2)` through the thread pool and comes back to `spare` once written. At MAX_WRITES in flight the
 * socket is paused, so at most MAX_WRITES + 1 slabs exist whatever the client's speed.
 */
class FillState implements Fill {
  current: Buffer = Buffer.allocUnsafeSlow(SLAB_BYTES);
  used = 0;
  over = false;
  readonly done: Promise<number>;
  private readonly spare: Buffer[] = [];
  private inflight = 0;
  private written = 0;
  private received = 0;
  /** File offset of the next write: writes run in parallel in the thread pool, so each says where it goes. */
  private pos = 0;
  private resolveDone!: (n: number) => void;
  private rejectDone!: (e: Error) => void;
  private closed = false;

  constructor(
    private readonly fd: number,
    private readonly path: string,
    private readonly length: number,
    private readonly socket: net.Socket,
    private readonly onOver: () => void,
  ) {
    this.done = new Promise<number>((res, rej) => {
      this.resolveDone = res;
      this.rejectDone = rej;
    });
    this.done.catch(() => undefined);
  }

  /** Where the next read lands: the rest of the current slab. */
  room(): Buffer {
    return this.current.subarray(this.used);
  }

  owns(buf: Buffer): boolean {
    return buf.buffer === this.current.buffer;
  }

  /** `keep` body bytes arrived in room(). */
  took(keep: number): void {
    if (this.over) return;
    this.used += keep;
    this.received += keep;
    if (this.used > 0 && (this.current.length - this.used < MIN_READ_ROOM || this.received === this.length)) this.flush();
    this.endIfDone();
  }

  /** Body bytes that arrived elsewhere (with the headers, or in a buffer given out before the switch). */
  write(buf: Buffer): void {
    if (this.over || buf.length === 0) return;
    // Written in order: what is in the current slab goes first.
    if (this.used > 0) this.flush();
    this.received += buf.length;
    this.inflight++;
    const at = this.pos;
    this.pos += buf.length;
    this.put(buf, 0, buf.length, at, undefined);
  }

  private flush(): void {
    const buf = this.current;
    const n = this.used;
    this.current = this.spare.pop() ?? Buffer.allocUnsafeSlow(SLAB_BYTES);
    this.used = 0;
    this.inflight++;
    if (this.inflight >= MAX_WRITES) this.socket.pause();
    const at = this.pos;
    this.pos += n;
    this.put(buf, 0, n, at, buf);
  }

  /**
   * Bytes off..off+n of buf at file offset `at`. A write that stops short (the disk filling up) goes on
   * with the rest, whose write then says why (ENOSPC).
   */
  private put(buf: Buffer, off: number, n: number, at: number, slab: Buffer | undefined): void {
    fs.write(this.fd, buf, off, n, at, (err, w) => {
      if (!err && w > 0 && w < n && !this.over) {
        this.written += w;
        return this.put(buf, off + w, n - w, at + w, slab);
      }
      this.wrote(err, w, n, slab);
    });
  }

  private wrote(err: NodeJS.ErrnoException | null, w: number, n: number, slab: Buffer | undefined): void {
    this.inflight--;
    if (slab) this.spare.push(slab);
    if (this.over) {
      this.closeIfIdle();
      return;
    }
    if (err || w !== n) return this.fail(fillError(err ?? new Error(`the file took none of ${n} bytes`), this.path));
    this.written += w;
    if (this.inflight < MAX_WRITES && this.received < this.length && this.socket.isPaused()) this.socket.resume();
    this.endIfDone();
  }

  endIfDone(): void {
    if (this.over || this.inflight > 0 || this.received < this.length || this.used > 0) return;
    this.over = true;
    this.onOver();
    this.closed = true;
    fs.close(this.fd, (err) => (err ? this.rejectDone(fillError(err, this.path)) : this.resolveDone(this.written)));
  }

  fail(err: Error): void {
    if (this.over) return;
    this.over = true;
    this.onOver();
    this.socket.pause();
    this.rejectDone(err);
    this.closeIfIdle();
  }

  cancel(err: Error): void {
    this.fail(err);
  }

  /** The descriptor closes once no write uses it (its number could otherwise be reused under one). */
  private closeIfIdle(): void {
    if (this.closed || this.inflight > 0) return;
    this.closed = true;
    fs.close(this.fd, () => undefined);
  }
}
