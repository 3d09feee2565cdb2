/**
 * The raw upload path (Upgrade: capsule-upload, src/api/raw-upload.ts) and the file handoff behind it,
 * with a real daemon, real sandboxes and raw sockets: exact bytes, the same answers and errors as a plain
 * PUT, bounded memory, nothing left behind by an upload cut off or refused, and the relay where the
 * handoff is declined (a volume).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { Sandbox, Volume } from '../../../src/sdk/index.js';
import type { ConnectionOptions } from '../../../src/sdk/options.js';
import { authHeaders, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';

interface RawAnswer {
  status: number;
  headers: Record<string, string>;
  json: { size?: number; path?: string; error?: { code: string; message: string } } | undefined;
}

/**
 * One raw upload on its own connection: the request head as given, then `body` (cut after `cutAfter`
 * bytes, or followed by `extra`), then the answer read to the connection's close.
 */
function rawPut(
  url: string,
  target: string,
  body: Buffer,
  opts: { headers?: Record<string, string>; method?: string; auth?: boolean; cutAfter?: number; extra?: Buffer; chunk?: number } = {},
): Promise<RawAnswer | 'closed'> {
  const u = new URL(url);
  const headers: Record<string, string> = {
    host: u.host,
    connection: 'Upgrade',
    upgrade: 'capsule-upload',
    'content-type': 'application/octet-stream',
    'content-length': String(body.length),
    ...(opts.auth === false ? {} : authHeaders(url)),
    ...opts.headers,
  };
  for (const [k, v] of Object.entries(headers)) if (v === '') delete headers[k];
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(u.port), u.hostname);
    const got: Buffer[] = [];
    sock.on('data', (c) => got.push(c));
    sock.on('error', () => undefined);
    sock.on('close', () => {
      const all = Buffer.concat(got);
      const end = all.indexOf('\r\n\r\n');
      if (end < 0) return resolve('closed');
      const [statusLine, ...lines] = all.subarray(0, end).toString('latin1').split('\r\n');
      const h = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
      const text = all.subarray(end + 4).toString('utf8');
      resolve({ status: Number(statusLine!.split(' ')[1]), headers: h, json: text ? JSON.parse(text) : undefined });
    });
    sock.once('connect', async () => {
      try {
        sock.write(`${opts.method ?? 'PUT'} ${target} HTTP/1.1\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`);
        const send = opts.cutAfter !== undefined ? body.subarray(0, opts.cutAfter) : body;
        const step = opts.chunk ?? send.length;
        for (let off = 0; off < send.length; off += step) {
          if (!sock.write(send.subarray(off, off + step))) await new Promise((r) => sock.once('drain', r));
        }
        if (opts.cutAfter !== undefined) {
          await new Promise((r) => setTimeout(r, 100));
          sock.destroy();
          return;
        }
        if (opts.extra) sock.write(opts.extra);
      } catch (e) {
        reject(e);
      }
    });
  });
}

/**
 * The same request as a plain PUT (no Upgrade), on a raw socket too: the daemon answers a refused upload
 * before reading all of it and closes, which a client library still sending would report as a broken pipe.
 */
const PLAIN = { connection: 'close', upgrade: '' };
// (A plain PUT the daemon refuses early is answered, then the connection closes; the comparisons below send
// bodies small enough to be on the wire before that, as a client library still sending a large one can lose
// the answer to the reset. The raw path reads and drops the rest instead, so its answers always arrive.)

describe('raw uploads', () => {
  let d: TestDaemon;
  let conn: ConnectionOptions;
  let sbx: Sandbox;
  const files = (p: string) => `/v1/sandboxes/${sbx.id}/files?path=${encodeURIComponent(p)}`;
  const sh = async (cmd: string) => (await sbx.commands.run(cmd)).stdout;
  /** Bytes the sandbox's agent wrote with write(2) so far: its file writes, not its socket sends. */
  const agentWrote = () => {
    const pid = fs.readFileSync(path.join(d.dataDir, 'sandboxes', sbx.id, 'bundle', 'init.pid'), 'utf8').trim();
    return Number(/^wchar:\s*(\d+)$/m.exec(fs.readFileSync(`/proc/${pid}/io`, 'utf8'))![1]);
  };
  const tempFiles = async (dir: string) => (await sh(`ls -a ${dir}`)).split('\n').filter((n) => n.startsWith('.capsule-write'));

  before(async () => {
    d = await startTestDaemon();
    conn = { apiUrl: d.url };
    sbx = await Sandbox.create({ ...conn, template: 'busybox' });
  });
  after(async () => {
    await d?.stop();
  });

  it('writes exactly the body, filled by the daemon itself (the agent writes none of it), with memory bounded', async () => {
    const data = randomBytes(64 << 20);
    const wroteBefore = agentWrote();
    const rss0 = Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${d.child.pid}/status`, 'utf8'))![1]);
    let peak = rss0;
    const t = setInterval(() => (peak = Math.max(peak, Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${d.child.pid}/status`, 'utf8'))![1]))), 2);
    const r = await rawPut(d.url, files('/tmp/raw.bin'), data, { chunk: 1 << 20 });
    clearInterval(t);
    assert.notEqual(r, 'closed');
    const a = r as RawAnswer;
    assert.equal(a.status, 200, JSON.stringify(a.json));
    assert.deepEqual(a.json, { path: '/tmp/raw.bin', size: data.length });
    assert.equal(a.headers.connection, 'close', 'a raw upload closes its connection after the answer');
    assert.ok(agentWrote() - wroteBefore < 1 << 20, `the agent wrote ${agentWrote() - wroteBefore} bytes itself`);
    assert.equal((await sh('sha256sum /tmp/raw.bin')).split(' ')[0], createHash('sha256').update(data).digest('hex'));
    assert.ok((peak - rss0) / 1024 < 64, `the daemon grew by ${((peak - rss0) / 1024).toFixed(1)} MiB`);
    assert.deepEqual(await tempFiles('/tmp'), []);
  });

  it('takes the body sent with the headers in one write, an empty body, and ignores bytes past Content-Length', async () => {
    const small = randomBytes(300_000);
    const one = (await rawPut(d.url, files('/tmp/one.bin'), small, { extra: Buffer.from('NOT PART OF THE FILE') })) as RawAnswer;
    assert.equal(one.status, 200, JSON.stringify(one.json));
    assert.equal(one.json?.size, small.length);
    assert.equal((await sh('wc -c < /tmp/one.bin')).trim(), String(small.length));
    const empty = (await rawPut(d.url, files('/tmp/empty.bin'), Buffer.alloc(0))) as RawAnswer;
    assert.equal(empty.status, 200, JSON.stringify(empty.json));
    assert.equal(empty.json?.size, 0);
    assert.equal((await sh('wc -c < /tmp/empty.bin')).trim(), '0');
  });

  it('answers errors as a plain PUT does (a directory), and leaves no temp file', async () => {
    const dir = (await rawPut(d.url, files('/tmp'), randomBytes(2 << 20))) as RawAnswer;
    assert.equal(dir.status, 400);
    assert.equal(dir.json?.error?.code, 'invalid_argument');
    const plain = (await rawPut(d.url, files('/tmp'), randomBytes(1000), { headers: PLAIN })) as RawAnswer;
    assert.equal(plain.status, 400);
    assert.equal(plain.json?.error?.code, dir.json?.error?.code);
    const missing = (await rawPut(d.url, `/v1/sandboxes/sbx-000000000000/files?path=/tmp/x`, randomBytes(2 << 20))) as RawAnswer;
    assert.equal(missing.status, 404);
    assert.deepEqual(await tempFiles('/tmp'), []);
  });

  it('refuses what the raw path cannot take before reading a byte: no length, chunked, another method or route, no key', async () => {
    const body = randomBytes(1000);
    const noLength = (await rawPut(d.url, files('/tmp/nolen.bin'), body, { headers: { 'content-length': '', 'transfer-encoding': 'chunked' } })) as RawAnswer;
    assert.equal(noLength.status, 400);
    assert.match(noLength.json?.error?.message ?? '', /capsule-upload request needs a Content-Length/);
    const post = (await rawPut(d.url, files('/tmp/post.bin'), body, { method: 'POST' })) as RawAnswer;
    assert.equal(post.status, 400);
    assert.match(post.json?.error?.message ?? '', /capsule-upload/);
    const elsewhere = (await rawPut(d.url, `/v1/sandboxes/${sbx.id}/network`, body)) as RawAnswer;
    assert.equal(elsewhere.status, 400, 'only the upload route takes a raw body');
    assert.match(elsewhere.json?.error?.message ?? '', /capsule-upload is for PUT/);
    const anon = (await rawPut(d.url, files('/tmp/anon.bin'), body, { auth: false })) as RawAnswer;
    assert.equal(anon.status, 401);
    assert.equal((await sh('ls /tmp')).split('\n').filter((n) => /nolen|post|anon/.test(n)).length, 0, 'nothing written');
  });

  it('an upload cut off midway leaves neither the file nor a temp file, and the daemon goes on', async () => {
    const data = randomBytes(16 << 20);
    const r = await rawPut(d.url, files('/tmp/cut.bin'), data, { cutAfter: 5 << 20, chunk: 1 << 20 });
    assert.equal(r, 'closed');
    for (let i = 0; i < 50 && (await tempFiles('/tmp')).length > 0; i++) await new Promise((res) => setTimeout(res, 20));
    assert.deepEqual(await tempFiles('/tmp'), []);
    assert.equal((await sh('ls /tmp/cut.bin 2>&1')).includes('No such file'), true);
    const after = (await rawPut(d.url, files('/tmp/after.bin'), randomBytes(2 << 20))) as RawAnswer;
    assert.equal(after.status, 200);
  });

  it('a full disk answers as a plain PUT does and leaves no temp file', async () => {
    const small = await Sandbox.create({ ...conn, template: 'busybox', resources: { diskMb: 16 } });
    try {
      const big = randomBytes(40 << 20);
      const r = (await rawPut(d.url, `/v1/sandboxes/${small.id}/files?path=/tmp/full.bin`, big, { chunk: 1 << 20 })) as RawAnswer;
      assert.equal(r.status, 422, JSON.stringify(r.json));
      assert.equal(r.json?.error?.code, 'sandbox_error');
      assert.match(r.json?.error?.message ?? '', /no space left on device/i);
      // The disk filled to the last block, a plain PUT fails at its first write.
      await small.commands.run('dd if=/dev/zero of=/tmp/filler bs=1M 2>/dev/null; dd if=/dev/zero of=/tmp/filler2 bs=1k 2>/dev/null; true');
      const plain = (await rawPut(d.url, `/v1/sandboxes/${small.id}/files?path=/tmp/full2.bin`, randomBytes(100_000), { headers: PLAIN })) as RawAnswer;
      assert.equal(plain.status, r.status);
      assert.equal(plain.json?.error?.code, r.json?.error?.code);
      const left = (await small.commands.run('ls -a /tmp')).stdout.split('\n').filter((n) => n.startsWith('.capsule-write') || n.startsWith('full'));
      assert.deepEqual(left, []);
    } finally {
      await small.kill();
    }
  });

  it('on a volume the handoff is declined and the body is relayed through the agent, with the same result', async () => {
    await Volume.create({ ...conn, name: 'raw-vol', sizeMb: 64 });
    const v = await Sandbox.create({ ...conn, template: 'busybox', volumes: [{ name: 'raw-vol', path: '/data' }] });
    try {
      const data = randomBytes(8 << 20);
      const r = (await rawPut(d.url, `/v1/sandboxes/${v.id}/files?path=/data/vol.bin`, data, { chunk: 1 << 20 })) as RawAnswer;
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.equal((await v.commands.run('sha256sum /data/vol.bin')).stdout.split(' ')[0], createHash('sha256').update(data).digest('hex'));
    } finally {
      await v.kill();
    }
  });

  it('the SDK takes the raw path for a large buffer and a plain PUT for a small one', async () => {
    const big = randomBytes(3 << 20);
    const before = agentWrote();
    assert.deepEqual(await sbx.files.write('/tmp/sdk-big.bin', big), { path: '/tmp/sdk-big.bin', size: big.length });
    assert.ok(agentWrote() - before < 1 << 20, 'filled by the daemon');
    assert.ok(Buffer.from(await sbx.files.read('/tmp/sdk-big.bin', { format: 'bytes' })).equals(big));
    const small = randomBytes(1000);
    await sbx.files.write('/tmp/sdk-small.bin', small);
    assert.ok(Buffer.from(await sbx.files.read('/tmp/sdk-small.bin', { format: 'bytes' })).equals(small));
  });
});
