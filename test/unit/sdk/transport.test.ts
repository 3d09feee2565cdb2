import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { readAll, readLimitedText, sendRequest, webStream } from '../../../src/sdk/transport.js';
import { HttpClient } from '../../../src/sdk/http.js';
import { UnavailableError } from '../../../src/sdk/index.js';

/** A loopback server whose behaviour each test picks by path. */
let server: http.Server;
let base: string;

before(async () => {
  server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    switch (url.pathname) {
      case '/echo': {
        const parts: Buffer[] = [];
        req.on('data', (c: Buffer) => parts.push(c));
        req.on('end', () => {
          const body = Buffer.concat(parts);
          res.setHeader('content-type', 'application/octet-stream');
          res.setHeader('x-got-length', String(req.headers['content-length'] ?? 'none'));
          res.end(body);
        });
        return;
      }
      case '/chunked': {
        // No Content-Length: the reader must collect pieces.
        res.write('abc');
        setTimeout(() => res.end('def'), 5);
        return;
      }
      case '/short': {
        // Announces more than it sends, then breaks the connection.
        res.setHeader('content-length', '100');
        res.write('0123456789');
        setTimeout(() => res.socket?.destroy(), 5);
        return;
      }
      case '/refuse': {
        // Answers before reading the upload, then closes, as the daemon does for a bad upload.
        res.setHeader('connection', 'close');
        res.statusCode = 409;
        res.end('{"error":{"code":"conflict","message":"sandbox is killed"}}');
        return;
      }
      case '/slow':
        setTimeout(() => res.end('late'), 2000);
        return;
      default:
        res.statusCode = 404;
        res.end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

const signal = () => new AbortController().signal;

describe('sdk transport', () => {
  it('sends in-memory bodies with a Content-Length and reads them back whole', async () => {
    const payload = Buffer.alloc(3 * 1024 * 1024 + 7, 0xab);
    const res = await sendRequest(new URL('/echo', base), { method: 'PUT', headers: {}, body: payload, signal: signal() });
    assert.equal(res.status, 200);
    assert.equal(res.headers['x-got-length'], String(payload.length));
    const got = await readAll(res);
    assert.ok(got instanceof Uint8Array && !Buffer.isBuffer(got), 'a plain Uint8Array, not a Buffer');
    assert.equal(got.byteLength, payload.length);
    assert.ok(Buffer.from(got).equals(payload));
  });

  it('streams a web ReadableStream body and a string body', async () => {
    const chunks = ['one ', 'two ', 'three'];
    const body = new ReadableStream<Uint8Array>({
      pull(c) {
        const next = chunks.shift();
        if (next === undefined) c.close();
        else c.enqueue(new TextEncoder().encode(next));
      },
    });
    const res = await sendRequest(new URL('/echo', base), { method: 'PUT', headers: {}, body, signal: signal() });
    assert.equal(Buffer.from(await readAll(res)).toString(), 'one two three');
    const res2 = await sendRequest(new URL('/echo', base), { method: 'POST', headers: {}, body: 'héllo', signal: signal() });
    assert.equal(res2.headers['x-got-length'], String(Buffer.byteLength('héllo')));
    assert.equal(Buffer.from(await readAll(res2)).toString(), 'héllo');
  });

  it('collects a body without Content-Length', async () => {
    const res = await sendRequest(new URL('/chunked', base), { method: 'GET', headers: {}, signal: signal() });
    assert.equal(Buffer.from(await readAll(res)).toString(), 'abcdef');
  });

  it('fails a body that ends before its Content-Length', async () => {
    const res = await sendRequest(new URL('/short', base), { method: 'GET', headers: {}, signal: signal() });
    await assert.rejects(readAll(res));
  });

  it('reports the answer when the server refuses an upload early and closes', async () => {
    // Larger than socket buffers, so the upload is still being written when the answer comes.
    const big = Buffer.alloc(32 * 1024 * 1024);
    const res = await sendRequest(new URL('/refuse', base), { method: 'PUT', headers: {}, body: big, signal: signal() });
    assert.equal(res.status, 409);
    assert.match(await readLimitedText(res, 1000), /sandbox is killed/);
  });

  it('gives a web stream of the body', async () => {
    const res = await sendRequest(new URL('/chunked', base), { method: 'GET', headers: {}, signal: signal() });
    const text = await new Response(webStream(res)).text();
    assert.equal(text, 'abcdef');
  });

  it('aborts a request in flight', async () => {
    const ac = new AbortController();
    const p = sendRequest(new URL('/slow', base), { method: 'GET', headers: {}, signal: ac.signal });
    setTimeout(() => ac.abort(), 20);
    await assert.rejects(p, (e: Error) => e.name === 'AbortError');
  });

  it('rejects protocols other than http and https', async () => {
    await assert.rejects(sendRequest(new URL('ftp://127.0.0.1/x'), { method: 'GET', headers: {}, signal: signal() }), /unsupported protocol/);
  });
});

describe('sdk HttpClient over the transport', () => {
  it('maps a timeout, an abort and an unreachable daemon to the documented errors', async () => {
    const client = new HttpClient({ apiUrl: base, apiKey: undefined, requestTimeoutMs: 50, signal: undefined, commandChannel: false });
    await assert.rejects(client.bytes('GET', '/../slow'), (e: Error) => e.name === 'TimeoutError' || /timed out/.test(e.message));
    const ac = new AbortController();
    const p = client.bytes('GET', '/../slow', { signal: ac.signal, timeoutMs: 0 });
    setTimeout(() => ac.abort(), 20);
    await assert.rejects(p, (e: Error) => e.name === 'AbortError');
    const dead = new HttpClient({ apiUrl: 'http://127.0.0.1:1', apiKey: undefined, requestTimeoutMs: 1000, signal: undefined, commandChannel: false });
    await assert.rejects(dead.bytes('GET', '/x'), UnavailableError);
  });
});
