/**
 * The SDK's side of raw uploads (files.write, ADR 0016): a large body of known length asks for
 * `Upgrade: capsule-upload`; a daemon (or a proxy) that will not take it gets the same bytes again as a
 * plain PUT; a small body, a stream, or an error that is the upload's own is never sent twice.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { after, before, beforeEach, describe, it } from 'node:test';

import { Files, RAW_UPLOAD_MIN_BYTES } from '../../../src/sdk/files.js';
import { HttpClient } from '../../../src/sdk/http.js';
import { resolveConnection } from '../../../src/sdk/options.js';
import { InvalidArgumentError } from '../../../src/sdk/index.js';

type Mode = 'take' | 'refuse' | 'cut' | 'bad-path';
let mode: Mode = 'take';
const seen: Array<{ raw: boolean; bytes: number }> = [];
let server: http.Server;
let files: Files;

function answer(status: number, body: unknown): string {
  const text = JSON.stringify(body);
  return `HTTP/1.1 ${status} X\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`;
}

before(async () => {
  server = http.createServer((req, res) => {
    let bytes = 0;
    req.on('data', (c: Buffer) => (bytes += c.length));
    req.on('end', () => {
      seen.push({ raw: false, bytes });
      res.setHeader('content-type', 'application/json');
      if (mode === 'bad-path') {
        res.statusCode = 400;
        res.end(JSON.stringify({ error: { code: 'invalid_argument', message: '/tmp is a directory' } }));
        return;
      }
      res.end(JSON.stringify({ path: '/tmp/f', size: bytes }));
    });
  });
  // The upgrade a raw upload asks for, answered as each kind of daemon would.
  server.on('upgrade', (req: http.IncomingMessage, socket: import('node:net').Socket, head: Buffer) => {
    assert.equal(req.headers.upgrade, 'capsule-upload');
    let bytes = head.length;
    const want = Number(req.headers['content-length']);
    socket.on('error', () => undefined);
    if (mode === 'refuse') {
      // A daemon or proxy that cannot take the raw path says so before reading the body.
      seen.push({ raw: true, bytes: 0 });
      socket.end(answer(400, { error: { code: 'invalid_argument', message: 'this connection cannot take an capsule-upload request; send a plain PUT' } }));
      return;
    }
    if (mode === 'cut') {
      // One that knows nothing of it (an older daemon) drops the connection.
      seen.push({ raw: true, bytes: 0 });
      socket.destroy();
      return;
    }
    const done = () => {
      seen.push({ raw: true, bytes });
      socket.end(mode === 'bad-path' ? answer(400, { error: { code: 'invalid_argument', message: '/tmp is a directory' } }) : answer(200, { path: '/tmp/f', size: bytes }));
    };
    if (bytes >= want) return done();
    socket.on('data', (c: Buffer) => {
      bytes += c.length;
      if (bytes >= want) done();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  files = new Files(new HttpClient(resolveConnection({ apiUrl: url, apiKey: 'k' })), 'sbx-1');
});
after(() => server.close());
beforeEach(() => {
  seen.length = 0;
  mode = 'take';
});

describe('files.write and the raw upload path', () => {
  it('sends a large buffer once, on the raw path', async () => {
    const r = await files.write('/tmp/f', Buffer.alloc(RAW_UPLOAD_MIN_BYTES, 1));
    assert.equal(r.size, RAW_UPLOAD_MIN_BYTES);
    assert.deepEqual(seen, [{ raw: true, bytes: RAW_UPLOAD_MIN_BYTES }]);
  });

  it('sends a small buffer and a stream as plain PUTs', async () => {
    await files.write('/tmp/f', Buffer.alloc(RAW_UPLOAD_MIN_BYTES - 1));
    await files.write('/tmp/f', Readable.from([Buffer.alloc(3 << 20)]));
    assert.deepEqual(seen, [
      { raw: false, bytes: RAW_UPLOAD_MIN_BYTES - 1 },
      { raw: false, bytes: 3 << 20 },
    ]);
  });

  it('falls back to a plain PUT when the raw path is refused or the connection is dropped', async () => {
    for (const m of ['refuse', 'cut'] as const) {
      seen.length = 0;
      mode = m;
      const r = await files.write('/tmp/f', new Uint8Array(2 << 20));
      assert.equal(r.size, 2 << 20, m);
      assert.deepEqual(seen, [
        { raw: true, bytes: 0 },
        { raw: false, bytes: 2 << 20 },
      ]);
    }
  });

  it("does not send again when the error is the upload's own", async () => {
    mode = 'bad-path';
    await assert.rejects(files.write('/tmp', new Uint8Array(2 << 20)), (e: unknown) => e instanceof InvalidArgumentError && /is a directory/.test(e.message));
    assert.deepEqual(seen, [{ raw: true, bytes: 2 << 20 }]);
  });
});
