/**
 * Wire format of the agent protocol (docs/agent-protocol.md): frame header,
 * type numbers, and bounded payload readers/writers. Mirrors agent/protocol.h.
 */

/** Protocol version this daemon speaks (docs/agent-protocol.md): it works with any agent of the same major. */
export const PROTO_MAJOR = 1;
export const PROTO_MINOR = 4;
/** The major version, as HELLO's first field has always carried it. */
export const PROTO_VERSION = PROTO_MAJOR;
export const HDR_LEN = 12;
/** Largest payload of any frame, both directions. */
export const MAX_PAYLOAD = 1 << 20;
/** Largest DATA chunk of protocol 1.0; with the large-data feature, DATA may fill MAX_PAYLOAD. */
export const MAX_DATA = 65536;
/** Credit each side starts with per (channel, stream). */
export const INIT_WINDOW = 256 * 1024;
/** Credit beyond this is a protocol violation. */
export const MAX_WINDOW = 64 * 1024 * 1024;
export const MAX_NAME_BYTES = 1024;
export const MAX_TARGET_BYTES = 4096;

export const FT = {
  HELLO: 0x01,
  PING: 0x02,
  EXEC: 0x03,
  ATTACH: 0x04,
  PS: 0x05,
  READ: 0x10,
  WRITE: 0x11,
  LIST: 0x12,
  STAT: 0x13,
  MKDIR: 0x14,
  REMOVE: 0x15,
  RENAME: 0x16,
  /** 1.2 (watch): watch a directory; EVENTS follow the OK. */
  WATCH: 0x17,
  OK: 0x40,
  ERROR: 0x41,
  DATA: 0x42,
  WINDOW: 0x43,
  EOF: 0x44,
  EXIT: 0x45,
  SIGNAL: 0x46,
  CLOSE: 0x47,
  ENTRIES: 0x48,
  END: 0x49,
  /** 1.1 (exec-streams): a control message for one stream of a process, e.g. a PTY resize. */
  CONTROL: 0x4a,
  /** 1.2 (watch): file watch events, under credit like ENTRIES. */
  EVENTS: 0x4b,
} as const;

/** Feature bits of HELLO (u64). Protocol 1.0 has none; docs/agent-protocol.md says what each adds. */
export const FEATURE_BITS = {
  'exec-streams': 1n << 0n,
  'large-data': 1n << 1n,
  'read-to-size': 1n << 2n,
  /** 1.2: terminal streams (kind pty, with a window size) and CONTROL RESIZE. */
  pty: 1n << 3n,
  /** 1.2: WATCH requests (inotify) and EVENTS frames. */
  watch: 1n << 4n,
  /** 1.3: WRITE sets user.* extended attributes; STAT and LIST entries carry them when asked. */
  xattr: 1n << 5n,
  /**
   * 1.4: a WRITE may ask (WRITE_HANDOFF) for its temp file's descriptor and inode in the OK; the daemon then
   * opens that file through the host's /proc and writes the upload itself (ADR 0016), or declines and sends DATA.
   */
  'file-handoff': 1n << 6n,
} as const;

/** Bit of WRITE's u32 mode, above the file mode's 12 bits: the daemon asks for the handoff ('file-handoff'). */
export const WRITE_HANDOFF = 1 << 16;

/** CONTROL kinds (u8, first field of a CONTROL payload). */
export const CTL_RESIZE = 1;

/** WATCH flags (u8). */
export const WATCH_RECURSIVE = 1;
/** Watch event types (u8) of an EVENTS frame, and their flag bits. */
export const WATCH_EVENT = { create: 1, write: 2, remove: 3, rename: 4, chmod: 5, overflow: 6, gone: 7 } as const;
export const WATCH_EVENT_DIR = 1;

/** EXEC flags (u8): stdin is a pipe; without one, the agent may hold its reply to send it with the exit. */
export const EXEC_STDIN_PIPE = 1;
export const EXEC_HOLD_REPLY = 2;
/** 1.1 (exec-streams): a stream table follows the environment; EXEC_STDIN_PIPE is then ignored. */
export const EXEC_STREAMS = 4;

/** Stream kinds of an EXEC stream table (u8). */
export const STREAM_KIND = { null: 0, 'pipe-in': 1, 'pipe-out': 2, pty: 3 } as const;
/** Entries in a stream table, and the highest fd of the child a stream may be bound to. */
export const MAX_STREAMS = 8;
export const MAX_CHILD_FD = 9;

export const STREAM_IN = 0;
export const STREAM_OUT = 1;
export const STREAM_ERR = 2;

export interface Frame {
  channel: number;
  type: number;
  stream: number;
  flags: number;
  payload: Buffer;
}

/** The agent broke the protocol; the connection is closed. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(`agent protocol violation: ${message}`);
    this.name = 'ProtocolError';
  }
}

export function encodeFrame(channel: number, type: number, stream: number, payload?: Buffer): Buffer {
  const len = payload ? payload.length : 0;
  if (len > MAX_PAYLOAD) throw new RangeError(`frame payload too large (${len} bytes)`);
  const out = Buffer.allocUnsafe(HDR_LEN + len);
  out.writeUInt32BE(len, 0);
  out.writeUInt32BE(channel >>> 0, 4);
  out.writeUInt8(type, 8);
  out.writeUInt8(stream, 9);
  out.writeUInt16BE(0, 10);
  if (payload) payload.copy(out, HDR_LEN);
  return out;
}

/** A frame header, big-endian, for a payload of `len` bytes sent separately (no copy of the payload). */
export function encodeHeader(channel: number, type: number, stream: number, len: number): Buffer {
  if (len > MAX_PAYLOAD) throw new RangeError(`frame payload too large (${len} bytes)`);
  const h = Buffer.allocUnsafe(HDR_LEN);
  h.writeUInt32BE(len, 0);
  h.writeUInt32BE(channel >>> 0, 4);
  h.writeUInt8(type, 8);
  h.writeUInt8(stream, 9);
  h.writeUInt16BE(0, 10);
  return h;
}

/**
 * Splits a byte stream into frames; rejects oversized frames before buffering
 * them. Every byte is copied at most once: a frame inside one chunk is a view
 * of it (or, for a `transient` chunk that the caller reuses, one copy), and a
 * frame that spans chunks is gathered into a buffer of its exact size as its
 * pieces arrive, never by concatenating the chunks again and again.
 */
export class FrameDecoder {
  private readonly head = Buffer.alloc(HDR_LEN);
  private headFill = 0;
  /** The frame whose payload is being gathered. */
  private partial: { channel: number; type: number; stream: number; flags: number; payload: Buffer; fill: number } | null = null;

  /**
   * Frames completed by this chunk. With `transient`, the chunk's memory is reused by the caller after
   * the call, so nothing returned refers to it.
   */
  push(chunk: Buffer, transient = false): Frame[] {
    const frames: Frame[] = [];
    let pos = 0;
    while (pos < chunk.length) {
      const p = this.partial;
      if (p) {
        const n = Math.min(p.payload.length - p.fill, chunk.length - pos);
        chunk.copy(p.payload, p.fill, pos, pos + n);
        p.fill += n;
        pos += n;
        if (p.fill === p.payload.length) {
          this.partial = null;
          frames.push({ channel: p.channel, type: p.type, stream: p.stream, flags: p.flags, payload: p.payload });
        }
        continue;
      }
      let h: Buffer;
      let hs: number;
      if (this.headFill === 0 && chunk.length - pos >= HDR_LEN) {
        h = chunk;
        hs = pos;
        pos += HDR_LEN;
      } else {
        const n = Math.min(HDR_LEN - this.headFill, chunk.length - pos);
        chunk.copy(this.head, this.headFill, pos, pos + n);
        this.headFill += n;
        pos += n;
        if (this.headFill < HDR_LEN) break;
        this.headFill = 0;
        h = this.head;
        hs = 0;
      }
      const len = h.readUInt32BE(hs);
      if (len > MAX_PAYLOAD) throw new ProtocolError(`frame of ${len} bytes exceeds the ${MAX_PAYLOAD} byte limit`);
      const channel = h.readUInt32BE(hs + 4);
      const type = h.readUInt8(hs + 8);
      const stream = h.readUInt8(hs + 9);
      const flags = h.readUInt16BE(hs + 10);
      if (chunk.length - pos >= len) {
        const view = chunk.subarray(pos, pos + len);
        // Small copies come from Node's pool, so a transient chunk costs one memcpy per frame.
        frames.push({ channel, type, stream, flags, payload: transient ? Buffer.from(view) : view });
        pos += len;
      } else {
        this.partial = { channel, type, stream, flags, payload: Buffer.allocUnsafe(len), fill: 0 };
      }
    }
    return frames;
  }
}

/**
 * Builds a payload from fixed-width big-endian integers and length-prefixed byte strings, in one buffer
 * that doubles when full. Why one buffer: an EXEC with a sandbox's environment has some twenty fields, and
 * a Buffer per field plus a concat cost ~25 µs of every command on this VM's cold caches (ADR 0016).
 */
export class PayloadWriter {
  private buf: Buffer;
  private size = 0;

  constructor(capacity = 256) {
    this.buf = Buffer.allocUnsafe(capacity);
  }

  u8(v: number): this {
    this.room(1);
    this.buf.writeUInt8(v, this.size);
    this.size += 1;
    return this;
  }
  u16(v: number): this {
    this.room(2);
    this.buf.writeUInt16BE(v & 0xffff, this.size);
    this.size += 2;
    return this;
  }
  u32(v: number): this {
    this.room(4);
    this.buf.writeUInt32BE(v >>> 0, this.size);
    this.size += 4;
    return this;
  }
  u64(v: number | bigint): this {
    this.room(8);
    this.buf.writeBigUInt64BE(typeof v === 'bigint' ? BigInt.asUintN(64, v) : BigInt(Math.max(0, Math.floor(v))), this.size);
    this.size += 8;
    return this;
  }
  bytes(v: Buffer | string): this {
    if (typeof v !== 'string') {
      this.u32(v.length);
      this.room(v.length);
      v.copy(this.buf, this.size);
      this.size += v.length;
      return this;
    }
    // A UTF-16 unit becomes at most 3 bytes of UTF-8 (a surrogate pair, two units, becomes 4).
    this.room(4 + v.length * 3);
    const n = this.buf.write(v, this.size + 4, 'utf8');
    this.buf.writeUInt32BE(n, this.size);
    this.size += 4 + n;
    return this;
  }
  get length(): number {
    return this.size;
  }
  /** The payload; the writer must not be used after this (the result shares its buffer). */
  finish(): Buffer {
    return this.buf.subarray(0, this.size);
  }
  private room(n: number): void {
    if (this.size + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.size + n) cap *= 2;
    const next = Buffer.allocUnsafe(cap);
    this.buf.copy(next, 0, 0, this.size);
    this.buf = next;
  }
}

/** Reads a payload; every overrun or bound violation throws ProtocolError. */
export class PayloadReader {
  private pos = 0;
  constructor(private readonly buf: Buffer, private readonly what: string) {}

  private need(n: number): void {
    if (this.buf.length - this.pos < n) throw new ProtocolError(`truncated ${this.what} payload`);
  }
  u8(): number {
    this.need(1);
    return this.buf.readUInt8(this.pos++);
  }
  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  u64(): number {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return Number(v);
  }
  /** A u64 that must stay exact (feature bits). */
  u64big(): bigint {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }
  i64(): number {
    this.need(8);
    const v = this.buf.readBigInt64BE(this.pos);
    this.pos += 8;
    return Number(v);
  }
  bytes(max: number): Buffer {
    const n = this.u32();
    if (n > max) throw new ProtocolError(`${this.what}: field of ${n} bytes exceeds ${max}`);
    this.need(n);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  get remaining(): number {
    return this.buf.length - this.pos;
  }
  /** The payload must be fully consumed. */
  done(): void {
    if (this.pos !== this.buf.length) throw new ProtocolError(`${this.what}: ${this.buf.length - this.pos} unexpected trailing bytes`);
  }
}
