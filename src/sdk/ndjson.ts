/**
 * Reads newline-delimited JSON (one JSON value per line) from a web
 * ReadableStream of bytes, validating every line against a zod schema.
 *
 * Lines are found at the byte level (0x0A never occurs inside a multi-byte
 * UTF-8 character), so chunk boundaries anywhere — mid-line, mid-character —
 * are handled, and a line is decoded only once it is complete. A line longer
 * than `maxLineBytes` is an error rather than unbounded memory.
 */
import type { z } from 'zod';
import { InternalError } from '../errors/index.js';
import { validateResponse } from './http.js';

/** Default cap on one NDJSON line: output chunks are far smaller than this. */
export const DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024;

export interface NdjsonOptions {
  /** Longest line accepted, in bytes (without the newline). */
  maxLineBytes?: number;
  /** Name of the stream for error messages, e.g. "POST /sandboxes/x/commands". */
  what?: string;
  /** Maps a failure while reading the body (abort, broken connection) to the error to throw. */
  onReadError?: (e: unknown) => Error;
}

const NEWLINE = 0x0a;

/** Split a byte stream into complete lines (without the newline), bounded in length. */
export async function* readLines(body: ReadableStream<Uint8Array>, opts: NdjsonOptions = {}): AsyncGenerator<Uint8Array> {
  const max = opts.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
  const what = opts.what ?? 'NDJSON stream';
  const reader = body.getReader();
  let pending: Uint8Array[] = [];
  let pendingBytes = 0;
  let finished = false;
  const tooLong = () => new InternalError(`${what}: a line is longer than ${max} bytes; the stream was dropped`, { maxLineBytes: max });
  try {
    for (;;) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (e) {
        throw opts.onReadError ? opts.onReadError(e) : e;
      }
      if (chunk.done) {
        finished = true;
        break;
      }
      const bytes = chunk.value;
      let start = 0;
      for (;;) {
        const nl = bytes.indexOf(NEWLINE, start);
        if (nl === -1) break;
        const piece = bytes.subarray(start, nl);
        if (pendingBytes + piece.byteLength > max) throw tooLong();
        const line = pending.length === 0 ? piece : concat([...pending, piece], pendingBytes + piece.byteLength);
        pending = [];
        pendingBytes = 0;
        start = nl + 1;
        yield line;
      }
      if (start < bytes.byteLength) {
        const rest = bytes.subarray(start);
        if (pendingBytes + rest.byteLength > max) throw tooLong();
        // Copy: the reader may reuse its buffer.
        pending.push(rest.slice());
        pendingBytes += rest.byteLength;
      }
    }
    if (pendingBytes > 0) yield concat(pending, pendingBytes);
  } finally {
    if (!finished) reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

function concat(parts: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}

const decoder = new TextDecoder('utf-8');

/** Parse each non-blank line as JSON and validate it with `schema`. */
export async function* readNdjson<S extends z.ZodType>(
  body: ReadableStream<Uint8Array>,
  schema: S,
  opts: NdjsonOptions = {},
): AsyncGenerator<z.infer<S>> {
  const what = opts.what ?? 'NDJSON stream';
  for await (const raw of readLines(body, opts)) {
    const text = decoder.decode(raw);
    if (text.trim() === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      throw new InternalError(`${what}: a line is not valid JSON: ${text.slice(0, 120)}`);
    }
    yield validateResponse(schema, value, what);
  }
}
