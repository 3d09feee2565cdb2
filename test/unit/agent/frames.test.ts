/**
 * The frame decoder: any split of the byte stream gives the same frames, a
 * transient chunk (the connection's reused read buffer) is never referenced
 * after push returns, and an oversized frame is refused at its header.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { encodeFrame, FrameDecoder, MAX_PAYLOAD, PayloadReader, PayloadWriter, ProtocolError, type Frame } from '../../../src/agent/frames.js';

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

describe('payload writer', () => {
  /** The same fields, encoded the plain way: a buffer per field, joined. */
  function reference(fields: Array<['u8' | 'u16' | 'u32', number] | ['bytes', string | Buffer]>): Buffer {
    const parts: Buffer[] = [];
    for (const [kind, v] of fields) {
      if (kind === 'bytes') {
        const b = typeof v === 'string' ? Buffer.from(v, 'utf8') : v;
        const n = Buffer.alloc(4);
        n.writeUInt32BE(b.length);
        parts.push(n, b);
        continue;
      }
      const size = kind === 'u8' ? 1 : kind === 'u16' ? 2 : 4;
      const b = Buffer.alloc(size);
      if (kind === 'u8') b.writeUInt8(v as number);
      else if (kind === 'u16') b.writeUInt16BE(v as number);
      else b.writeUInt32BE(v as number);
      parts.push(b);
    }
    return Buffer.concat(parts);
  }

  it('writes the same bytes as one buffer per field, across growth, for any text (multi-byte, astral, lone surrogates)', () => {
    const texts = ['', 'a', 'é€😀'.repeat(50), '\ud800x', 'x\udfff', 'k='.padEnd(300, 'v'), '€'.repeat(1000)];
    for (let seed = 0; seed < 40; seed++) {
      const fields: Array<['u8' | 'u16' | 'u32', number] | ['bytes', string | Buffer]> = [];
      const w = new PayloadWriter(seed % 3 === 0 ? 1 : 256);
      for (let i = 0; i < 1 + (seed % 17); i++) {
        const pick = (seed * 7 + i * 13) % 5;
        if (pick === 0) {
          fields.push(['u8', (seed + i) & 0xff]);
          w.u8((seed + i) & 0xff);
        } else if (pick === 1) {
          fields.push(['u16', (seed * 31 + i) & 0xffff]);
          w.u16((seed * 31 + i) & 0xffff);
        } else if (pick === 2) {
          fields.push(['u32', (seed * 2654435761 + i) >>> 0]);
          w.u32((seed * 2654435761 + i) >>> 0);
        } else if (pick === 3) {
          const t = texts[(seed + i) % texts.length]!;
          fields.push(['bytes', t]);
          w.bytes(t);
        } else {
          const b = Buffer.alloc((seed * 97 + i) % 700, seed);
          fields.push(['bytes', b]);
          w.bytes(b);
        }
      }
      const want = reference(fields);
      assert.equal(w.length, want.length);
      assert.deepEqual(w.finish(), want, `seed ${seed}`);
    }
  });

  it('reads back what it wrote', () => {
    const text = 'PATH=/usr/bin 😀 €';
    const r = new PayloadReader(new PayloadWriter(2).u8(7).bytes(text).u32(0xfffffffe).u8(9).finish(), 'test');
    assert.equal(r.u8(), 7);
    assert.equal(r.bytes(1000).toString('utf8'), text);
    assert.equal(r.u32(), 0xfffffffe);
    assert.equal(r.u8(), 9);
    assert.equal(r.remaining, 0);
  });
});
