/**
 * The SDK's whole-body download path (transport.getBytes, used by files.read
 * as bytes or text): a 2xx with a Content-Length comes back as bytes over a
 * reused connection; everything else is left to the general path (undefined);
 * broken framing and aborts fail.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';

import { getBytes } from '../../../src/sdk/transport.js';
import { Files } from '../../../src/sdk/files.js';
import { HttpClient } from '../../../src/sdk/http.js';
import { NotFoundError } from '../../../src/sdk/index.js';

let server: http.Server;
let raw: net.Server;
let base: string;
let rawBase: string;
let connections = 0;
const seenHeaders: http.IncomingHttpHeaders[] = [];
const BIG = Buffer.alloc(5 * 1024 * 1024 + 3);
for (let i = 0; i < BIG.length; i++) BIG[i] = (i * 31) & 0xff;

before(async () => {
  server = http.createServer((req, res) => {
    seenHeaders.push(req.headers);
    const url = new URL(req.url ?? '/', 'http://x');
    switch (url.pathname) {
      case '/big':
        res.setHeader('content-length', String(BIG.length));
        res.end(BIG);
        return;
      case '/empty':
        res.setHeader('content-length', '0');
        res.end();
        return;
      case '/chunked':
        res.write('abc');
        res.end('def');
        return;
      case '/v1/sandboxes/s1/files':
        if (url.searchParams.get('path') === '/missing') {
          res.statusCode = 404;
          res.setHeader('content-type', 'application/json');
          res.end(JSON.stringify({ error: { code: 'not_found', message: '/missing: No such file or directory' } }));
          return;
        }
        res.setHeader('content-length', '5');
        res.end('hello');
        return;
      case '/slow':
        setTimeout(() => res.end('late'), 2000);
        return;
      default:
        res.statusCode = 404;
        res.end('{}');
    }
  });
  server.on('connection', () => connections++);
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  // Answers that no well-behaved server sends, by path.
  raw = net.createServer((sock) => {
    sock.once('data', (d: Buffer) => {
      const path = d.toString('latin1').split(' ')[1];
      if (path === '/longer') sock.end('HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcdef');
      else if (path === '/cut') {
        sock.write('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789');
        setTimeout(() => sock.destroy(), 10);
      } else if (path === '/two-lengths') sock.end('HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd');
      else if (path === '/huge-head') sock.end(`HTTP/1.1 200 OK\r\nx-pad: ${'a'.repeat(70_000)}\r\ncontent-length: 1\r\n\r\nz`);
      else sock.destroy();
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((r) => raw.listen(0, '127.0.0.1', r));
  rawBase = `http://127.0.0.1:${(raw.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
  await new Promise<void>((r) => raw.close(() => r()));
});

const signal = () => new AbortController().signal;

describe('sdk download path', () => {
  it('reads a Content-Length body whole, and reuses the connection', async () => {
    const before = connections;
    const got = await getBytes(new URL('/big', base), { authorization: 'Bearer k' }, signal());
    assert.ok(got && Buffer.from(got).equals(BIG));
    assert.equal(seenHeaders.at(-1)!.authorization, 'Bearer k');
    for (let i = 0; i < 3; i++) assert.equal((await getBytes(new URL('/big', base), {}, signal()))!.byteLength, BIG.length);
    assert.deepEqual(await getBytes(new URL('/empty', base), {}, signal()), new Uint8Array(0));
    assert.equal(connections - before, 1, 'one keep-alive connection for all of them');
  });

  it('leaves everything else to the general path', async () => {
    assert.equal(await getBytes(new URL('/chunked', base), {}, signal()), undefined);
    assert.equal(await getBytes(new URL('/nope', base), {}, signal()), undefined);
    assert.equal(await getBytes(new URL('/two-lengths', rawBase), {}, signal()), undefined);
    assert.equal(await getBytes(new URL('/huge-head', rawBase), {}, signal()), undefined);
    assert.equal(await getBytes(new URL('https://127.0.0.1:1/x'), {}, signal()), undefined);
    assert.equal(await getBytes(new URL('/big', base), { 'x-bad': 'a\r\nx-injected: 1' }, signal()), undefined);
  });

  it('fails a body longer or shorter than its Content-Length', async () => {
    await assert.rejects(getBytes(new URL('/longer', rawBase), {}, signal()), /longer than its Content-Length of 3/);
    await assert.rejects(getBytes(new URL('/cut', rawBase), {}, signal()), /ended after 10 of 100 bytes/);
  });

  it('retries a GET on a new connection when a kept one was closed by the server', async () => {
    await getBytes(new URL('/big', base), {}, signal());
    server.closeIdleConnections();
    await new Promise((r) => setTimeout(r, 50));
    const before = connections;
    const got = await getBytes(new URL('/big', base), {}, signal());
    assert.equal(got!.byteLength, BIG.length);
    assert.equal(connections - before, 1);
  });

  it('aborts with the signal\'s reason', async () => {
    const ac = new AbortController();
    const p = getBytes(new URL('/slow', base), {}, ac.signal);
    setTimeout(() => ac.abort(new Error('stop')), 20);
    await assert.rejects(p, /stop/);
  });

  it('files.read takes it for bytes and text, and the general path for errors', async () => {
    const files = new Files(new HttpClient({ apiUrl: base, apiKey: 'k1', requestTimeoutMs: 5000, signal: undefined, commandChannel: false }), 's1');
    assert.equal(await files.read('/a.txt'), 'hello');
    assert.deepEqual(Buffer.from(await files.read('/a.txt', { format: 'bytes' })), Buffer.from('hello'));
    assert.equal(seenHeaders.at(-1)!.authorization, 'Bearer k1');
    await assert.rejects(files.read('/missing'), (e: unknown) => e instanceof NotFoundError && /No such file/.test(e.message));
  });

  it('files.read maps its own timeout like the general path', async () => {
    // A server that accepts and never answers: the download path times out, and says so as a TimeoutError.
    // It reads (and drops) the request, so it notices when the client gives up and closes.
    const silent = net.createServer((s) => s.on('error', () => undefined).resume());
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(silent.address() as AddressInfo).port}`;
      const files = new Files(new HttpClient({ apiUrl: url, apiKey: undefined, requestTimeoutMs: 100, signal: undefined, commandChannel: false }), 's1');
      const t0 = Date.now();
      await assert.rejects(files.read('/a.txt'), (e: Error) => e.name === 'TimeoutError' && /timed out after 100 ms/.test(e.message));
      assert.ok(Date.now() - t0 < 1000, 'not retried on the general path after timing out');
    } finally {
      await new Promise<void>((r) => silent.close(() => r()));
    }
  });
});
