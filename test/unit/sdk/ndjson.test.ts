import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CommandEvent } from '../../../src/schemas/index.js';
import { BoundedOutput } from '../../../src/sdk/commands.js';
import { readLines, readNdjson } from '../../../src/sdk/ndjson.js';
import { CapsuleError } from '../../../src/sdk/index.js';

/** A byte stream that delivers `text` cut at the given byte offsets. */
function streamOf(text: string | Uint8Array, cuts: number[] = []): ReadableStream<Uint8Array> {
  const bytes = typeof text === 'string' ? new TextEncoder().encode(text) : text;
  const pieces: Uint8Array[] = [];
  let prev = 0;
  for (const c of [...cuts, bytes.byteLength]) {
    pieces.push(bytes.slice(prev, c));
    prev = c;
  }
  return new ReadableStream<Uint8Array>({
    pull(ctrl) {
      const next = pieces.shift();
      if (next === undefined) ctrl.close();
      else ctrl.enqueue(next);
    },
  });
}

async function collect<T>(gen: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const v of gen) out.push(v);
  return out;
}

const EVENTS = [
  { type: 'start', pid: 7 },
  { type: 'stdout', data: 'héllo wörld ✓\n' },
  { type: 'stderr', data: 'oops' },
  { type: 'exit', exitCode: 3 },
];
const TEXT = EVENTS.map((e) => JSON.stringify(e)).join('\n') + '\n';

describe('readNdjson', () => {
  it('parses whole lines', async () => {
    assert.deepEqual(await collect(readNdjson(streamOf(TEXT), CommandEvent)), EVENTS);
  });

  it('handles a chunk boundary at every byte, including inside multi-byte characters', async () => {
    const len = new TextEncoder().encode(TEXT).byteLength;
    for (let cut = 1; cut < len; cut++) {
      assert.deepEqual(await collect(readNdjson(streamOf(TEXT, [cut]), CommandEvent)), EVENTS, `cut at ${cut}`);
    }
  });

  it('handles one byte per chunk', async () => {
    const len = new TextEncoder().encode(TEXT).byteLength;
    const cuts = Array.from({ length: len - 1 }, (_, i) => i + 1);
    assert.deepEqual(await collect(readNdjson(streamOf(TEXT, cuts), CommandEvent)), EVENTS);
  });

  it('accepts a last line without a newline and skips blank lines', async () => {
    const text = '\n' + JSON.stringify(EVENTS[0]) + '\n\n\r\n' + JSON.stringify(EVENTS[3]);
    assert.deepEqual(await collect(readNdjson(streamOf(text, [3, 10]), CommandEvent)), [EVENTS[0], EVENTS[3]]);
  });

  it('rejects a line longer than maxLineBytes, even when it arrives in pieces', async () => {
    const long = JSON.stringify({ type: 'stdout', data: 'x'.repeat(1000) }) + '\n';
    await assert.rejects(collect(readNdjson(streamOf(long, [100, 200, 300]), CommandEvent, { maxLineBytes: 500 })), (e: unknown) => {
      assert.ok(e instanceof CapsuleError);
      assert.match(e.message, /longer than 500 bytes/);
      return true;
    });
    // The limit also applies to an unterminated line.
    await assert.rejects(collect(readLines(streamOf('y'.repeat(600)), { maxLineBytes: 500 })), /longer than 500/);
    // A line of exactly the limit is fine.
    const ok = await collect(readLines(streamOf('z'.repeat(500) + '\n'), { maxLineBytes: 500 }));
    assert.equal(ok.length, 1);
  });

  it('rejects malformed JSON and events that do not match the schema', async () => {
    await assert.rejects(collect(readNdjson(streamOf('{"type":\n'), CommandEvent)), /not valid JSON/);
    await assert.rejects(collect(readNdjson(streamOf('{"type":"exit"}\n'), CommandEvent)), (e: unknown) => e instanceof CapsuleError && e.code === 'internal');
  });

  it('cancels the source when the consumer stops early', async () => {
    let cancelled = false;
    const src = new ReadableStream<Uint8Array>({
      start(ctrl) {
        ctrl.enqueue(new TextEncoder().encode(TEXT));
      },
      cancel() {
        cancelled = true;
      },
    });
    for await (const ev of readNdjson(src, CommandEvent)) {
      assert.equal(ev.type, 'start');
      break;
    }
    assert.equal(cancelled, true);
  });

  it('maps read errors through onReadError', async () => {
    const src = new ReadableStream<Uint8Array>({
      pull(ctrl) {
        ctrl.error(new TypeError('terminated'));
      },
    });
    await assert.rejects(
      collect(readNdjson(src, CommandEvent, { onReadError: (e) => new CapsuleError('unavailable', `broken: ${(e as Error).message}`) })),
      /broken: terminated/,
    );
  });
});

describe('BoundedOutput', () => {
  it('keeps at most maxBytes and never splits a character', () => {
    const out = new BoundedOutput(5);
    out.append('ab');
    out.append('cd€f'); // € is 3 bytes: only "cd" fits after "ab" plus 1 byte of room
    assert.equal(out.toString(), 'abcd');
    assert.equal(out.truncated, true);
    out.append('more');
    assert.equal(out.toString(), 'abcd');
  });

  it('is not truncated when everything fits exactly', () => {
    const out = new BoundedOutput(4);
    out.append('ab');
    out.append('cd');
    assert.equal(out.toString(), 'abcd');
    assert.equal(out.truncated, false);
  });
});
