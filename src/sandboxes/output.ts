/**
 * Process output on its way out of the daemon. The command service hands
 * every consumer raw bytes (ProcessEvent); each view turns them into its wire
 * form with an OutputEncoder of its own:
 *
 *  - `utf8`: text, decoded with one stateful decoder per stream, so a
 *    character split across two chunks (the agent cuts output wherever a pipe
 *    read ended) arrives whole in the later piece instead of as two U+FFFD.
 *    Bytes that are not UTF-8 at all still become U+FFFD: that is what text is.
 *  - `base64`: every chunk's exact bytes, for output that is not text.
 *
 * Anything a sandbox prints is hostile: the buffers that keep it are bounded
 * (BoundedOutput) and nothing here grows with the output.
 */
import { StringDecoder } from 'node:string_decoder';
import type { CommandEvent } from '../schemas/commands.js';

export const OUTPUT_ENCODINGS = ['utf8', 'base64'] as const;
export type OutputEncoding = (typeof OUTPUT_ENCODINGS)[number];

export type OutputStream = 'stdout' | 'stderr';

/** What the command service tells a consumer, in order. */
export type ProcessEvent =
  | { type: 'start'; pid: number }
  | { type: OutputStream; data: Buffer }
  | { type: 'exit'; exitCode: number; signal?: string; timedOut?: boolean; oomKilled?: boolean };

/** One consumer's decoder state: call `chunk` with each piece in order, `flush` at the end. */
export class OutputEncoder {
  private readonly decoders: Record<OutputStream, StringDecoder> | undefined;

  constructor(readonly encoding: OutputEncoding = 'utf8') {
    this.decoders = encoding === 'utf8' ? { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') } : undefined;
  }

  /** The text for this piece ('' when it ends inside a character whose rest is still to come). */
  chunk(stream: OutputStream, data: Buffer): string {
    return this.decoders ? this.decoders[stream].write(data) : data.toString('base64');
  }

  /** Whatever a stream still holds (an incomplete character at the very end becomes U+FFFD). */
  flush(stream: OutputStream): string {
    return this.decoders ? this.decoders[stream].end() : '';
  }
}

/**
 * Adapts a writer of wire events (NDJSON lines, MCP progress) to the
 * service's byte events, with its own encoder. Returns the writer's answer
 * (false: the consumer is full).
 */
export function wireEvents(encoding: OutputEncoding, write: (ev: CommandEvent) => boolean): (ev: ProcessEvent) => boolean {
  const enc = new OutputEncoder(encoding);
  const tag = encoding === 'base64' ? ({ encoding: 'base64' } as const) : {};
  const out = (stream: OutputStream, data: string): boolean => (data === '' ? true : write({ type: stream, data, ...tag }));
  return (ev) => {
    switch (ev.type) {
      case 'stdout':
      case 'stderr':
        return out(ev.type, enc.chunk(ev.type, ev.data));
      case 'exit':
        out('stdout', enc.flush('stdout'));
        out('stderr', enc.flush('stderr'));
        return write(ev);
      default:
        return write(ev);
    }
  };
}

/** Longest UTF-8 sequence; a cut inside one is at most this many bytes from the end. */
const MAX_UTF8_SEQ = 4;

/** The length of `buf` without a UTF-8 character that starts but does not end within it. */
export function completeUtf8Length(buf: Buffer): number {
  const end = buf.length;
  for (let i = end - 1; i >= 0 && i >= end - MAX_UTF8_SEQ; i--) {
    const b = buf[i]!;
    if ((b & 0xc0) === 0x80) continue; // a continuation byte: keep looking for its lead
    const need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
    return end - i < need ? i : end;
  }
  return end;
}

/**
 * Keeps the first `limit` bytes of a stream and counts the rest. Output comes
 * from inside a sandbox, so nothing here grows past its limit.
 */
export class BoundedOutput {
  private chunks: Buffer[] = [];
  private kept = 0;
  private dropped = 0;
  constructor(private readonly limit: number) {}

  push(chunk: Buffer): void {
    const room = this.limit - this.kept;
    if (room <= 0) {
      this.dropped += chunk.length;
      return;
    }
    const part = chunk.length <= room ? chunk : chunk.subarray(0, room);
    this.chunks.push(part);
    this.kept += part.length;
    this.dropped += chunk.length - part.length;
  }

  get truncated(): boolean {
    return this.dropped > 0;
  }

  /** Every byte kept so far. */
  bytes(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks, this.kept)];
    return this.chunks[0] ?? Buffer.alloc(0);
  }

  /**
   * The kept bytes in `encoding`. As text, a character cut by the limit is left
   * out rather than shown as U+FFFD; invalid bytes elsewhere become U+FFFD.
   */
  encode(encoding: OutputEncoding): string {
    const all = this.bytes();
    if (encoding === 'base64') return all.toString('base64');
    return (this.truncated ? all.subarray(0, completeUtf8Length(all)) : all).toString('utf8');
  }
}

/**
 * How much recent output of each stream a process keeps for a client that
 * connects later (the agent keeps as much while no daemon is attached): a
 * reconnect replays at most this, then live output follows.
 */
export const REPLAY_BYTES = 64 * 1024;

/**
 * The last `limit` bytes of a stream (what a reconnect replays). Once older
 * output was dropped, the replay starts at the first byte that is not a UTF-8
 * continuation byte (skipping at most 3): the cut is arbitrary anyway, and a
 * text follower then gets a whole first character rather than U+FFFD.
 */
export class TailBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  private dropped = false;
  constructor(private readonly limit: number = REPLAY_BYTES) {}

  push(chunk: Buffer): void {
    if (chunk.length >= this.limit) {
      this.dropped ||= this.size > 0 || chunk.length > this.limit;
      this.chunks = [Buffer.from(chunk.subarray(chunk.length - this.limit))];
      this.size = this.limit;
      return;
    }
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.size - this.chunks[0]!.length >= this.limit) {
      this.size -= this.chunks.shift()!.length;
      this.dropped = true;
    }
  }

  /** At most `limit` bytes: the newest. */
  bytes(): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.size);
    this.chunks = all.length ? [all] : [];
    let out = all;
    if (all.length > this.limit) {
      out = all.subarray(all.length - this.limit);
      this.dropped = true;
    }
    if (!this.dropped) return out;
    let skip = 0;
    while (skip < 3 && skip < out.length && (out[skip]! & 0xc0) === 0x80) skip++;
    return out.subarray(skip);
  }
}
