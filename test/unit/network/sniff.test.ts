/** SNI and Host sniffing on real ClientHellos (node's TLS) and hostile inputs. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import fc from 'fast-check';
import { sniff, SNIFF_LIMIT } from '../../../src/network/sniff.js';

function clientHello(servername: string | undefined): Promise<Buffer> {
  return new Promise((resolve) => {
    const srv = net.createServer((c) => {
      let got = Buffer.alloc(0);
      c.on('data', (d: Buffer) => {
        got = Buffer.concat([got, d]);
        if (got.length >= 5 && got.length >= 5 + got.readUInt16BE(3)) {
          resolve(got);
          c.destroy();
          srv.close();
        }
      });
    });
    srv.listen(0, '127.0.0.1', () => {
      const c = tls.connect({ host: '127.0.0.1', port: (srv.address() as net.AddressInfo).port, ...(servername ? { servername } : {}), rejectUnauthorized: false });
      c.on('error', () => undefined);
    });
  });
}

describe('sniff', () => {
  it('reads the SNI of a real ClientHello, whole or in pieces', async () => {
    const hello = await clientHello('Allowed.Test');
    assert.deepEqual(sniff(hello), { done: true, protocol: 'tls', name: 'allowed.test' });
    for (const cut of [1, 5, 40, hello.length - 1]) assert.deepEqual(sniff(hello.subarray(0, cut)), { done: false }, `cut at ${cut}`);
    const noSni = await clientHello(undefined);
    assert.deepEqual(sniff(noSni), { done: true, protocol: 'tls' });
  });

  it('reads a ClientHello split over two TLS records', async () => {
    const hello = await clientHello('split.test');
    const body = hello.subarray(5);
    const rec = (b: Buffer) => Buffer.concat([Buffer.from([0x16, 0x03, 0x01, b.length >> 8, b.length & 255]), b]);
    const two = Buffer.concat([rec(body.subarray(0, 50)), rec(body.subarray(50))]);
    assert.deepEqual(sniff(two), { done: true, protocol: 'tls', name: 'split.test' });
  });

  it('reads the HTTP Host (and an absolute-form target)', () => {
    assert.deepEqual(sniff(Buffer.from('GET / HTTP/1.1\r\nUser-Agent: x\r\nhost:  Example.com:8080 \r\n\r\n')), { done: true, protocol: 'http', name: 'example.com' });
    assert.deepEqual(sniff(Buffer.from('GET http://proxy.test/x HTTP/1.1\r\n\r\n')), { done: true, protocol: 'http', name: 'proxy.test' });
    assert.deepEqual(sniff(Buffer.from('GET / HTTP/1.1\r\nHost: x')), { done: false });
    assert.deepEqual(sniff(Buffer.from('GE')), { done: false });
    assert.deepEqual(sniff(Buffer.from('SSH-2.0-OpenSSH\r\n')), { done: true, protocol: 'other' });
    const huge = Buffer.concat([Buffer.from('GET / HTTP/1.1\r\n'), Buffer.alloc(SNIFF_LIMIT, 'a')]);
    assert.deepEqual(sniff(huge), { done: true, protocol: 'http' });
  });

  it('never throws on arbitrary bytes, and never names a host with control characters', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), fc.boolean(), (bytes, tlsStart) => {
        const b = Buffer.from(bytes);
        if (tlsStart && b.length > 0) b[0] = 0x16;
        const r = sniff(b);
        if (r.done && r.name !== undefined) assert.match(r.name, /^[\x21-\x7e]+$/);
      }),
      { numRuns: 3000 },
    );
  });
});
