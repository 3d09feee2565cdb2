/**
 * Wire format of the agent protocol (docs/agent-protocol.md): frame header,
 * type numbers, and bounded payload readers/writers. Mirrors agent/protocol.h.
 */

/** Protocol version this daemon speaks (docs/agent-protocol.md): it works with any agent of the same major. */
export const PROTO_MAJOR = 1;
export const PROTO_MINOR = 1;
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
} as const;

/** Feature bits of HELLO (u64). Protocol 1.0 has none; docs/agent-protocol.md says what each adds. */
export const FEATURE_BITS = {
  'exec-streams': 1n << 0n,
  'large-data': 1n << 1n,
  'read-to-size': 1n << 2n,
} as const;

/** CONTROL kinds (u8, first field of a CONTROL payload). */
export const CTL_RESIZE = 1;

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

/** Splits a byte stream into frames; rejects oversized frames before buffering them. */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private total = 0;

  push(chunk: Buffer): Frame[] {
    if (chunk.length) {
      this.chunks.push(chunk);
      this.total += chunk.length;
    }
    const frames: Frame[] = [];
    for (;;) {
      if (this.total < HDR_LEN) break;
      const head = this.peek(HDR_LEN);
      const len = head.readUInt32BE(0);
      if (len > MAX_PAYLOAD) throw new ProtocolError(`frame of ${len} bytes exceeds the ${MAX_PAYLOAD} byte limit`);
      if (this.total < HDR_LEN + len) break;
      const whole = this.take(HDR_LEN + len);
      frames.push({
        channel: whole.readUInt32BE(4),
        type: whole.readUInt8(8),
        stream: whole.readUInt8(9),
        flags: whole.readUInt16BE(10),
        payload: whole.subarray(HDR_LEN),
      });
    }
    return frames;
  }

  private peek(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    this.merge(n);
    return this.chunks[0]!.subarray(0, n);
  }

  private take(n: number): Buffer {
    if (this.chunks[0]!.length < n) this.merge(n);
    const first = this.chunks[0]!;
    const out = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.total -= n;
    return out;
  }

  /** Merge leading chunks until the first holds at least n bytes. */
  private merge(n: number): void {
    const parts: Buffer[] = [];
    let have = 0;
    while (have < n) {
      const c = this.chunks.shift()!;
      parts.push(c);
      have += c.length;
    }
    this.chunks.unshift(Buffer.concat(parts, have));
  }
}

/** Builds a payload from fixed-width big-endian integers and length-prefixed byte strings. */
export class PayloadWriter {
  private parts: Buffer[] = [];
  private size = 0;

  u8(v: number): this {
    const b = Buffer.allocUnsafe(1);
    b.writeUInt8(v, 0);
    return this.raw(b);
  }
  u32(v: number): this {
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32BE(v >>> 0, 0);
    return this.raw(b);
  }
  u64(v: number | bigint): this {
    const b = Buffer.allocUnsafe(8);
    b.writeBigUInt64BE(typeof v === 'bigint' ? BigInt.asUintN(64, v) : BigInt(Math.max(0, Math.floor(v))), 0);
    return this.raw(b);
  }
  bytes(v: Buffer | string): this {
    const b = typeof v === 'string' ? Buffer.from(v, 'utf8') : v;
    this.u32(b.length);
    return this.raw(b);
  }
  get length(): number {
    return this.size;
  }
  finish(): Buffer {
    return Buffer.concat(this.parts, this.size);
  }
  private raw(b: Buffer): this {
    this.parts.push(b);
    this.size += b.length;
    return this;
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
