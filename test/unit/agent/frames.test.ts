/**
 * The frame decoder: any split of the byte stream gives the same frames, a
 * transient chunk (the connection's reused read buffer) is never referenced
 * after push returns, and an oversized frame is refused at its header.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { encodeFrame, FrameDecoder, MAX_PAYLOAD, ProtocolError, type Frame } from '../../../src/agent/frames.js';

/** Deterministic pseudo-random numbers (xorshift), so a failure can be replayed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

function frames(rand: () => number, n: number): Buffer[] {
  const sizes = [0, 1, 11, 12, 13, 4095, 65536, 65548, 300_000, MAX_PAYLOAD];
  return Array.from({ length: n }, (_, i) => {
    const len = sizes[Math.floor(rand() * sizes.length)]!;
    const payload = Buffer.alloc(len);
    for (let j = 0; j < len; j += 997) payload[j] = (i * 7 + j) & 0xff;
    return encodeFrame(i + 1, 0x42, i % 3, payload);
  });
}

describe('frame decoder', () => {
  for (const transient of [false, true]) {
    it(`decodes the same frames from any split of the stream (${transient ? 'transient chunks' : 'owned chunks'})`, () => {
      for (let seed = 1; seed <= 20; seed++) {
        const rand = rng(seed);
        const encoded = frames(rand, 12);
        const stream = Buffer.concat(encoded);
        const dec = new FrameDecoder();
        const got: Frame[] = [];
        // One scratch buffer, overwritten after every push, as the connection's read buffer is.
        const scratch = Buffer.alloc(256 * 1024);
        for (let off = 0; off < stream.length; ) {
          const n = Math.min(stream.length - off, 1 + Math.floor(rand() * (rand() < 0.3 ? 20 : scratch.length)));
          if (transient) {
            stream.copy(scratch, 0, off, off + n);
            got.push(...dec.push(scratch.subarray(0, n), true));
            scratch.fill(0xee);
          } else {
            got.push(...dec.push(stream.subarray(off, off + n)));
          }
          off += n;
        }
        assert.equal(got.length, encoded.length, `seed ${seed}`);
        got.forEach((f, i) => {
          assert.equal(f.channel, i + 1);
          assert.equal(f.stream, i % 3);
          assert.ok(f.payload.equals(encoded[i]!.subarray(12)), `seed ${seed} frame ${i} payload`);
        });
      }
    });
  }

  it('refuses a frame over the limit from its header alone', () => {
    const hdr = Buffer.alloc(12);
    hdr.writeUInt32BE(MAX_PAYLOAD + 1, 0);
    const dec = new FrameDecoder();
    assert.deepEqual(dec.push(hdr.subarray(0, 5)), []);
    assert.throws(() => dec.push(hdr.subarray(5)), ProtocolError);
  });
});
