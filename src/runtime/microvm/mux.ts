/**
 * The daemon's side of a microVM's agent transport: many agent connections
 * over one virtio-serial port. The VM's QEMU serves the port as a unix socket
 * (`-chardev socket,server=on`); this relay connects to it, listens on the
 * sandbox's agent socket (what `agentEndpoint` names, so the agent client is
 * the same as for containers), and carries each accepted connection as a
 * numbered stream. Inside the guest the agent demultiplexes (agent/vm.c) and
 * hands each stream to its normal connection handler through a socketpair.
 *
 * Frames, both ways, big-endian: u8 type, u8 flags (0), u16 length, u32
 * stream, then `length` bytes (at most MUX_MAX_DATA).
 * - SYNC (0xA5, payload "capsule-mux1", stream = a nonce): the relay sends one
 *   after connecting; the guest drops every stream and answers with the same
 *   nonce. Until that answer the relay discards what it reads (a guest, or a
 *   previous connection, may have left half a frame), and the answer is the
 *   sign the agent is up (create waits for it).
 * - OPEN (relay only): a new stream. The guest answers CLOSE when it has no
 *   room (MUX_MAX_STREAMS).
 * - DATA: bytes of a stream; each side sends at most MUX_WINDOW bytes not yet
 *   acknowledged by a CREDIT (u32) from the other.
 * - CLOSE: the sender is done with the stream; frames for unknown streams are
 *   late ones and ignored.
 * Anything else from the guest is a violation: every stream is closed and the
 * relay syncs again. Memory is bounded by the windows: at most MUX_WINDOW per
 * stream and direction, MUX_MAX_STREAMS streams.
 */
import fs from 'node:fs';
import net from 'node:net';

export const MUX_HDR = 8;
export const MUX_MAX_DATA = 32 * 1024;
export const MUX_WINDOW = 256 * 1024;
export const MUX_MAX_STREAMS = 64;
const MAGIC = Buffer.from('capsule-mux1');
const T = { OPEN: 1, DATA: 2, CLOSE: 3, CREDIT: 4, SYNC: 0xa5 } as const;

export interface MuxLogger {
  warn(obj: unknown, msg?: string): void;
}

interface Stream {
  sock: net.Socket;
  /** Bytes we may still send the guest. */
  credit: number;
  /** Bytes written to the client since the last CREDIT. */
  written: number;
  /** Writes to the client not yet flushed. */
  pending: number;
  /** Bytes the guest sent that we have not credited back yet: never more than the window. */
  outstanding: number;
  /** Read from the client beyond the credit (the socket is paused meanwhile): at most one read's worth. */
  backlog: Buffer[];
  /** The client ended its side: CLOSE once the backlog is sent. */
  ending: boolean;
}

function frame(type: number, stream: number, payload?: Buffer): Buffer {
  const len = payload?.length ?? 0;
  const b = Buffer.allocUnsafe(MUX_HDR + len);
  b[0] = type;
  b[1] = 0;
  b.writeUInt16BE(len, 2);
  b.writeUInt32BE(stream >>> 0, 4);
  if (payload) payload.copy(b, MUX_HDR);
  return b;
}

export class MuxRelay {
  private port: net.Socket | null = null;
  private server: net.Server | null = null;
  private readonly streams = new Map<number, Stream>();
  private nextStream = 1;
  private nonce = 0;
  private synced = false;
  private inbuf: Buffer = Buffer.alloc(0);
  private closed = false;
  private readyWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  /** Why the relay ended, once it has. */
  endReason: string | null = null;

  constructor(
    private readonly serialPath: string,
    private readonly listenPath: string,
    private readonly log: MuxLogger,
  ) {}

  /** Connect to QEMU's socket (retrying until `deadline`), listen on the agent socket, and send the first SYNC. */
  async start(deadline: number, signal?: AbortSignal): Promise<void> {
    for (let delay = 5; ; delay = Math.min(delay * 2, 100)) {
      signal?.throwIfAborted();
      if (this.closed) throw new Error(`the relay closed: ${this.endReason}`);
      try {
        this.port = await connectUnix(this.serialPath);
        break;
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`cannot connect to the VM's serial socket ${this.serialPath}: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, delay));
      }
    }
    const port = this.port;
    port.setNoDelay?.(true);
    port.on('data', (chunk: Buffer) => this.onPortData(chunk));
    port.on('error', (err) => this.end(`the VM's serial socket failed: ${err.message}`));
    port.on('close', () => this.end("the VM's serial socket closed (QEMU exited)"));
    await fs.promises.rm(this.listenPath, { force: true });
    const server = net.createServer((sock) => this.accept(sock));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.listenPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    await fs.promises.chmod(this.listenPath, 0o600);
    this.sync();
  }

  /** Resolves once the guest answered the current SYNC (its agent is up). */
  ready(): Promise<void> {
    if (this.synced) return Promise.resolve();
    if (this.closed) return Promise.reject(new Error(this.endReason ?? 'the relay is closed'));
    return new Promise((resolve, reject) => this.readyWaiters.push({ resolve, reject }));
  }

  get isSynced(): boolean {
    return this.synced;
  }

  get streamCount(): number {
    return this.streams.size;
  }

  private sync(): void {
    this.synced = false;
    this.nonce = (this.nonce + 1) >>> 0 || 1;
    this.inbuf = Buffer.alloc(0);
    this.port?.write(frame(T.SYNC, this.nonce, MAGIC));
  }

  /** Connections made before the guest answered: opened once it has (at most MUX_MAX_STREAMS in all). */
  private waiting: net.Socket[] = [];

  private accept(sock: net.Socket): void {
    this.waiting = this.waiting.filter((s) => !s.destroyed);
    if (this.closed || this.streams.size + this.waiting.length >= MUX_MAX_STREAMS) {
      sock.destroy();
      return;
    }
    if (!this.synced) {
      sock.pause();
      this.waiting.push(sock);
      return;
    }
    this.open(sock);
  }

  private open(sock: net.Socket): void {
    let id = this.nextStream;
    while (this.streams.has(id) || id === 0) id = (id + 1) >>> 0;
    this.nextStream = (id + 1) >>> 0 || 1;
    const st: Stream = { sock, credit: MUX_WINDOW, written: 0, pending: 0, outstanding: 0, backlog: [], ending: false };
    this.streams.set(id, st);
    this.port!.write(frame(T.OPEN, id));
    sock.on('data', (chunk: Buffer) => {
      st.backlog.push(chunk);
      this.pump(id, st);
    });
    sock.on('end', () => {
      st.ending = true;
      this.pump(id, st);
    });
    sock.on('close', () => this.finish(id, st));
    sock.resume();
    sock.on('error', () => sock.destroy());
  }

  /** Send what the client wrote, as far as the credit allows; pause the client while some is left. */
  private pump(id: number, st: Stream): void {
    while (st.backlog.length > 0 && st.credit > 0) {
      const head = st.backlog[0]!;
      const n = Math.min(head.length, st.credit, MUX_MAX_DATA);
      st.credit -= n;
      this.port?.write(frame(T.DATA, id, head.subarray(0, n)));
      if (n === head.length) st.backlog.shift();
      else st.backlog[0] = head.subarray(n);
    }
    if (st.backlog.length > 0) st.sock.pause();
    else if (st.ending) this.finish(id, st);
    else if (st.sock.isPaused()) st.sock.resume();
  }

  private finish(id: number, st: Stream): void {
    if (this.streams.get(id) !== st) return;
    this.streams.delete(id);
    if (!this.closed) this.port?.write(frame(T.CLOSE, id));
    st.sock.destroy();
  }

  private onPortData(chunk: Buffer): void {
    this.inbuf = this.inbuf.length === 0 ? chunk : Buffer.concat([this.inbuf, chunk]);
    let off = 0;
    const buf = this.inbuf;
    for (;;) {
      if (!this.synced) {
        const at = findSync(buf, off, this.nonce);
        if (at < 0) {
          off = Math.max(off, buf.length - (MUX_HDR + MAGIC.length - 1));
          break;
        }
        off = at + MUX_HDR + MAGIC.length;
        this.synced = true;
        for (const w of this.readyWaiters.splice(0)) w.resolve();
        for (const sock of this.waiting.splice(0)) if (!sock.destroyed) this.open(sock);
        continue;
      }
      if (buf.length - off < MUX_HDR) break;
      const type = buf[off]!;
      const len = buf.readUInt16BE(off + 2);
      const sid = buf.readUInt32BE(off + 4);
      if (buf[off + 1] !== 0 || len > MUX_MAX_DATA) {
        this.violation(`bad frame header (type ${type}, length ${len})`);
        return;
      }
      if (buf.length - off < MUX_HDR + len) break;
      const payload = buf.subarray(off + MUX_HDR, off + MUX_HDR + len);
      off += MUX_HDR + len;
      if (!this.onFrame(type, sid, payload)) return;
    }
    this.inbuf = off >= buf.length ? Buffer.alloc(0) : Buffer.from(buf.subarray(off));
  }

  /** False when the frame was a violation (the state was reset). */
  private onFrame(type: number, sid: number, payload: Buffer): boolean {
    if (type === T.SYNC) return true; // a late answer to an older SYNC
    const st = this.streams.get(sid);
    switch (type) {
      case T.DATA: {
        if (!st) return true;
        st.pending += payload.length;
        st.outstanding += payload.length;
        if (st.outstanding > MUX_WINDOW) {
          this.violation(`stream ${sid} overran its window`);
          return false;
        }
        st.sock.write(Buffer.from(payload), () => {
          st.pending -= payload.length;
          st.written += payload.length;
          if (this.streams.get(sid) === st && (st.pending === 0 || st.written >= MUX_WINDOW / 4)) {
            const b = Buffer.allocUnsafe(4);
            b.writeUInt32BE(st.written, 0);
            st.outstanding -= st.written;
            st.written = 0;
            this.port?.write(frame(T.CREDIT, sid, b));
          }
        });
        return true;
      }
      case T.CLOSE:
        if (st) {
          this.streams.delete(sid);
          st.sock.end();
        }
        return true;
      case T.CREDIT: {
        if (payload.length !== 4) {
          this.violation('bad CREDIT frame');
          return false;
        }
        if (!st) return true;
        st.credit += payload.readUInt32BE(0);
        if (st.credit > MUX_WINDOW) {
          this.violation(`stream ${sid} got more credit than its window`);
          return false;
        }
        this.pump(sid, st);
        return true;
      }
      default:
        this.violation(`unknown frame type ${type}`);
        return false;
    }
  }

  private dropStreams(): void {
    for (const sock of this.waiting.splice(0)) sock.destroy();
    for (const st of this.streams.values()) st.sock.destroy();
    this.streams.clear();
  }

  private violation(why: string): void {
    this.log.warn({ serial: this.serialPath, why }, 'microVM agent transport: protocol violation from the guest; closing its streams and syncing again');
    this.dropStreams();
    this.sync();
  }

  private end(why: string): void {
    if (this.closed) return;
    this.endReason = why;
    this.close();
  }

  /** Close every stream, the listener (removing its socket) and the serial connection. */
  close(): void {
    if (!this.closed) this.endReason ??= 'closed';
    this.closed = true;
    this.synced = false;
    this.dropStreams();
    for (const w of this.readyWaiters.splice(0)) w.reject(new Error(this.endReason ?? 'closed'));
    this.server?.close();
    this.server = null;
    try {
      fs.rmSync(this.listenPath, { force: true });
    } catch {
      /* the dir is going anyway */
    }
    this.port?.destroy();
    this.port = null;
  }
}

/** Offset of the SYNC frame answering `nonce` in buf from `from`, or -1. */
function findSync(buf: Buffer, from: number, nonce: number): number {
  const want = frame(T.SYNC, nonce, MAGIC);
  return buf.indexOf(want, from);
}

function connectUnix(p: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection({ path: p });
    s.once('connect', () => {
      s.removeAllListeners('error');
      resolve(s);
    });
    s.once('error', reject);
  });
}
