/** The files API: round trips, big files, listing, and that paths never leave the sandbox. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { Readable } from 'node:stream';
import { api, authHeaders, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';

let d: TestDaemon;
let id: string;
const enc = encodeURIComponent;

async function sh(cmd: string) {
  const r = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd });
  assert.equal(r.status, 200, r.text);
  return r.json;
}
async function put(path: string, body: Uint8Array | string) {
  return api(d.url, 'PUT', `/v1/sandboxes/${id}/files?path=${enc(path)}`, body, { 'content-type': 'application/octet-stream' });
}
/** The daemon's resident memory, MiB. */
function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** Samples a process's RSS every 2 ms until stopped; `growth()` is the peak over the first sample. */
function watchRss(pid: number): { stop(): void; growth(): number } {
  const start = rssMiB(pid);
  let peak = start;
  const t = setInterval(() => (peak = Math.max(peak, rssMiB(pid))), 2);
  return {
    stop: () => {
      clearInterval(t);
      peak = Math.max(peak, rssMiB(pid));
    },
    growth: () => peak - start,
  };
}
/** What one transfer may add to the daemon's memory whatever the file size: the windows and buffers, not the file. */
const RSS_GROWTH_LIMIT_MIB = 64;

async function get(path: string) {
  const r = await fetch(`${d.url}/v1/sandboxes/${id}/files?path=${enc(path)}`, { headers: authHeaders(d.url) });
  return { status: r.status, bytes: Buffer.from(await r.arrayBuffer()) };
}

/**
 * A raw HTTP/1.1 client on one keep-alive connection: sends requests as written and reads responses
 * strictly by their framing (Content-Length), so extra or missing body bytes show up as a broken next
 * response instead of being smoothed over by a client library.
 */
class RawHttp {
  private buf = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  private closed = false;
  readonly sock: net.Socket;
  constructor(url: string) {
    const u = new URL(url);
    this.sock = net.connect(Number(u.port), u.hostname);
    this.sock.on('data', (c: Buffer) => {
      this.buf = Buffer.concat([this.buf, c]);
      this.wake?.();
    });
    this.sock.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    this.sock.on('error', () => undefined);
  }
  get(path: string, headers: Record<string, string>): void {
    const h = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
    this.sock.write(`GET ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\n${h}\r\n`);
  }
  private async until(cond: () => boolean): Promise<void> {
    while (!cond()) {
      if (this.closed) throw new Error(`connection closed with ${this.buf.length} unread bytes`);
      await new Promise<void>((r) => (this.wake = r));
    }
  }
  /** The next response: status line must come first; the body is exactly Content-Length bytes. */
  async response(): Promise<{ status: string; headers: Record<string, string>; body: Buffer }> {
    await this.until(() => this.buf.includes('\r\n\r\n'));
    const end = this.buf.indexOf('\r\n\r\n');
    const [status, ...lines] = this.buf.subarray(0, end).toString('latin1').split('\r\n');
    const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
    const len = Number(headers['content-length']);
    assert.ok(Number.isSafeInteger(len), `a Content-Length in ${JSON.stringify(headers)}`);
    this.buf = this.buf.subarray(end + 4);
    await this.until(() => this.buf.length >= len);
    const body = this.buf.subarray(0, len);
    this.buf = this.buf.subarray(len);
    return { status: status!, headers, body };
  }
  /** Bytes received beyond the last response read. */
  get pending(): number {
    return this.buf.length;
  }
}

describe('files', () => {
  before(async () => {
    d = await startTestDaemon();
    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    assert.equal(r.status, 201, r.text);
    id = r.json.id;
  });
  after(async () => {
    await d?.stop();
  });

  it('writes and reads text and binary, creating parents', async () => {
    const w = await put('/work/deep/dir/hello.txt', 'hello\n');
    assert.equal(w.status, 200, w.text);
    assert.deepEqual(w.json, { path: '/work/deep/dir/hello.txt', size: 6 });
    assert.equal((await sh('cat /work/deep/dir/hello.txt')).stdout, 'hello\n');
    const bin = crypto.randomBytes(70_000);
    bin[0] = 0;
    bin[1] = 0xff;
    await put('/tmp/blob.bin', bin);
    const r = await get('/tmp/blob.bin');
    assert.ok(r.bytes.equals(bin));
    const owner = await sh('stat -c %u:%g /tmp/blob.bin');
    assert.equal(owner.stdout, '0:0\n', 'written as root inside the sandbox');
  });

  it('streams a 100 MB file both ways, with the daemon\'s memory bounded', async () => {
    const size = 100 * 1024 * 1024;
    const pid = d.child.pid!;
    const chunk = crypto.randomBytes(1024 * 1024);
    const hash = crypto.createHash('sha256');
    let sent = 0;
    const body = new Readable({
      read() {
        if (sent >= size) return this.push(null);
        hash.update(chunk);
        sent += chunk.length;
        this.push(chunk);
      },
    });
    const t0 = Date.now();
    const upRss = watchRss(pid);
    const r = await fetch(`${d.url}/v1/sandboxes/${id}/files?path=/tmp/big.bin`, {
      method: 'PUT',
      headers: { ...authHeaders(d.url), 'content-type': 'application/octet-stream' },
      body: Readable.toWeb(body) as ReadableStream,
      duplex: 'half',
    } as RequestInit);
    assert.equal(r.status, 200, await r.clone().text());
    assert.equal(((await r.json()) as { size: number }).size, size);
    const up = Date.now() - t0;
    upRss.stop();
    const expected = hash.digest('hex');
    const inside = await sh('sha256sum /tmp/big.bin');
    assert.equal(inside.stdout.split(' ')[0], expected);

    const t1 = Date.now();
    const downRss = watchRss(pid);
    const res = await fetch(`${d.url}/v1/sandboxes/${id}/files?path=/tmp/big.bin`, { headers: authHeaders(d.url) });
    assert.equal(res.headers.get('content-length'), String(size));
    const h2 = crypto.createHash('sha256');
    let got = 0;
    for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) {
      h2.update(c);
      got += c.length;
    }
    const down = Date.now() - t1;
    downRss.stop();
    assert.equal(got, size);
    assert.equal(h2.digest('hex'), expected);
    console.log(
      `100 MiB upload ${(100 / (up / 1000)).toFixed(0)} MiB/s, download ${(100 / (down / 1000)).toFixed(0)} MiB/s; ` +
        `daemon RSS growth ${upRss.growth().toFixed(1)} / ${downRss.growth().toFixed(1)} MiB`,
    );
    assert.ok(upRss.growth() < RSS_GROWTH_LIMIT_MIB, `upload grew the daemon by ${upRss.growth().toFixed(1)} MiB`);
    assert.ok(downRss.growth() < RSS_GROWTH_LIMIT_MIB, `download grew the daemon by ${downRss.growth().toFixed(1)} MiB`);
    await sh('rm /tmp/big.bin');
  });

  it('a download is exactly its Content-Length while the file grows, and the connection stays usable', async () => {
    // 8 MiB (more than the agent sends before the reader takes any), then an appender that never stops.
    await sh('dd if=/dev/zero of=/tmp/grow bs=1048576 count=8 2>/dev/null; echo small > /tmp/small');
    const bg = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: 'while :; do echo x >> /tmp/grow; done', background: true });
    assert.equal(bg.status, 202, bg.text);
    const http = new RawHttp(d.url);
    try {
      http.get(`/v1/sandboxes/${id}/files?path=${enc('/tmp/grow')}`, authHeaders(d.url));
      // Take the headers, then stall a while: the file grows behind the part already read.
      http.sock.pause();
      await new Promise((r) => setTimeout(r, 50));
      http.sock.resume();
      await new Promise((r) => setTimeout(r, 20));
      http.sock.pause();
      await new Promise((r) => setTimeout(r, 300));
      http.sock.resume();
      const first = await http.response();
      assert.match(first.status, /^HTTP\/1\.1 200/);
      assert.ok(first.body.length >= 8 << 20, `at least the 8 MiB there at the start (${first.body.length})`);
      assert.ok(first.body.subarray(0, 8 << 20).equals(Buffer.alloc(8 << 20)), 'the first 8 MiB are the zeros written');
      // The next response on the same connection starts right after the announced length.
      http.get(`/v1/sandboxes/${id}/files?path=${enc('/tmp/small')}`, authHeaders(d.url));
      const second = await http.response();
      assert.match(second.status, /^HTTP\/1\.1 200/, 'the connection is still framed: the first body ended at its Content-Length');
      assert.equal(second.body.toString(), 'small\n');
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(http.pending, 0, 'nothing after the second response');
    } finally {
      http.sock.destroy();
      await api(d.url, 'DELETE', `/v1/sandboxes/${id}/commands/${bg.json.pid}`);
    }
  });

  it('a download of a file that shrinks meanwhile breaks off instead of ending short under its Content-Length', async () => {
    await sh('dd if=/dev/zero of=/tmp/shrink bs=1048576 count=16 2>/dev/null');
    const http = new RawHttp(d.url);
    try {
      http.get(`/v1/sandboxes/${id}/files?path=${enc('/tmp/shrink')}`, authHeaders(d.url));
      http.sock.pause();
      await new Promise((r) => setTimeout(r, 100)); // the agent is at most a window into the file
      await sh('truncate -s 1048576 /tmp/shrink');
      http.sock.resume();
      // The daemon cannot take back the 16 MiB it announced: it closes the connection, and the client sees
      // a body shorter than its Content-Length (an error), never a complete-looking truncated file.
      await assert.rejects(http.response(), /connection closed/);
    } finally {
      http.sock.destroy();
    }
    // The daemon says why, and it and the sandbox are fine.
    assert.match(d.log(), /changed while being read.*"msg":"file download cut off"/);
    assert.equal((await sh('echo ok')).stdout, 'ok\n');
  });

  it('lists, stats, makes dirs, renames and removes', async () => {
    assert.equal((await api(d.url, 'POST', `/v1/sandboxes/${id}/files/mkdir`, { path: '/data/a/b' })).status, 204);
    await put('/data/a/one.txt', '1');
    await sh("ln -s /etc/passwd /data/a/link; printf x > \"/data/a/$(printf 'new\\nline')\"; printf y > \"/data/a/$(printf 'bad\\377name')\"");
    const l = await api(d.url, 'GET', `/v1/sandboxes/${id}/files/list?path=/data/a`);
    assert.equal(l.status, 200, l.text);
    const byName = Object.fromEntries(l.json.entries.map((e: any) => [e.name, e]));
    assert.equal(byName.b.type, 'dir');
    assert.equal(byName['one.txt'].type, 'file');
    assert.equal(byName['one.txt'].size, 1);
    assert.equal(byName.link.type, 'symlink');
    assert.equal(byName.link.symlinkTarget, '/etc/passwd');
    assert.ok(byName['new\nline'], 'names with newlines survive');
    const bad = l.json.entries.find((e: any) => e.nameBase64);
    assert.ok(bad, 'invalid UTF-8 names carry their exact bytes');
    assert.deepEqual(Buffer.from(bad.nameBase64, 'base64'), Buffer.from('bad\xffname', 'latin1'));
    assert.equal(l.json.truncated, false);
    const lim = await api(d.url, 'GET', `/v1/sandboxes/${id}/files/list?path=/data/a&limit=2`);
    assert.equal(lim.json.entries.length, 2);
    assert.equal(lim.json.truncated, true);

    const st = await api(d.url, 'GET', `/v1/sandboxes/${id}/files/stat?path=/data/a/one.txt`);
    assert.equal(st.json.type, 'file');
    assert.ok(Date.parse(st.json.mtime) > 0);
    assert.equal((await api(d.url, 'POST', `/v1/sandboxes/${id}/files/rename`, { from: '/data/a/one.txt', to: '/data/two.txt' })).status, 204);
    assert.equal((await get('/data/two.txt')).bytes.toString(), '1');
    const missing = await api(d.url, 'GET', `/v1/sandboxes/${id}/files/stat?path=/data/a/one.txt`);
    assert.equal(missing.status, 404);
    assert.equal(missing.json.error.code, 'not_found');
    const nonRec = await api(d.url, 'DELETE', `/v1/sandboxes/${id}/files?path=/data`);
    assert.ok(nonRec.status >= 400 && nonRec.status < 500, 'a non-empty dir needs recursive');
    assert.equal((await api(d.url, 'DELETE', `/v1/sandboxes/${id}/files?path=/data&recursive=true`)).status, 204);
    assert.equal((await sh('test -e /data && echo yes || echo no')).stdout, 'no\n');
  });

  it('never reaches host files through symlinks, .. or absolute paths', async () => {
    const marker = `/tmp/capsule-host-marker-${process.pid}`;
    fs.writeFileSync(marker, 'HOST SECRET');
    try {
      await sh(`ln -s /etc/shadow /tmp/shadow-link; ln -s ../../../../../../.. /tmp/up; ln -s ${marker} /tmp/marker-link`);
      const hostShadow = fs.existsSync('/etc/shadow') ? fs.readFileSync('/etc/shadow') : Buffer.alloc(0);
      for (const p of ['/tmp/shadow-link', '/tmp/up/etc/shadow', '/../../../../etc/shadow', '../../etc/shadow', '/tmp/marker-link', marker, `/tmp/up${marker}`]) {
        const r = await get(p);
        if (r.status === 200) {
          assert.ok(!r.bytes.equals(hostShadow) || hostShadow.length === 0, `${p} returned the host's /etc/shadow`);
          assert.ok(!r.bytes.toString().includes('HOST SECRET'), `${p} reached a host file`);
        } else {
          assert.ok(r.status >= 400 && r.status < 500, `${p}: ${r.status}`);
        }
      }
      // Writing through a symlink lands inside the sandbox, never on the host.
      await sh(`ln -sf ${marker} /tmp/write-link`);
      await put('/tmp/write-link', 'overwritten');
      assert.equal(fs.readFileSync(marker, 'utf8'), 'HOST SECRET');
      const up = await put('/tmp/up/tmp/escape-attempt', 'x');
      assert.ok(up.status < 500);
      assert.ok(!fs.existsSync('/tmp/escape-attempt'));
    } finally {
      fs.rmSync(marker, { force: true });
    }
  });

  it('refuses FIFOs and directories for reads without hanging', async () => {
    await sh('mkfifo /tmp/fifo');
    const f = await get('/tmp/fifo');
    assert.ok(f.status >= 400 && f.status < 500, String(f.status));
    const dir = await get('/tmp');
    assert.ok(dir.status >= 400 && dir.status < 500);
    const dev = await get('/dev/zero');
    assert.ok(dev.status >= 400 && dev.status < 500);
  });
});
