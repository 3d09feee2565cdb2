/**
 * Networking with real programs in a real debian sandbox:
 *  - port exposure: an HTTP server and a WebSocket echo server inside, reached through the daemon by
 *    both URL forms, refused without the token, open when public; what the sandbox sees of the request;
 *  - egress: HTTPS with SNI to the allowed name from python, with the ledger's byte counts;
 *  - the package smoke test: `apt-get install` with an allowlist naming only deb.debian.org. The mirror
 *    is a loopback HTTP server standing in for deb.debian.org (the simulated internet): no packet leaves
 *    127.0.0.0/8, so the host's real mirror is not used.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { api, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';
import { startInternet, type Internet } from '../../helpers/internet.js';
import { netRelays, settledLeftovers } from '../../helpers/leftovers.js';

let d: TestDaemon;
let web: Internet;
let mirror: http.Server;
let mirrorHits: string[] = [];
let id: string;
let daemonPort: number;

const MIRROR = { name: 'deb.debian.org', address: '203.0.113.20', loopback: '127.0.0.20' };

/** A request to the daemon with any Host header (host-routed URLs need *.localhost, which getaddrinfo may not resolve). */
function request(p: string, opts: { host?: string; headers?: Record<string, string>; method?: string; body?: string } = {}): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port: daemonPort, path: p, method: opts.method ?? 'GET', headers: { ...(opts.host ? { host: opts.host } : {}), ...opts.headers } },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** One WebSocket round trip by hand: handshake, a masked text frame, the echo back. */
function wsEcho(p: string, opts: { host?: string; headers?: Record<string, string> }, text: string): Promise<{ status: number; reply?: string }> {
  return new Promise((resolve, reject) => {
    const s = net.connect(daemonPort, '127.0.0.1');
    const key = crypto.randomBytes(16).toString('base64');
    let buf = Buffer.alloc(0);
    let upgraded = false;
    s.setTimeout(10_000, () => s.destroy(new Error('websocket timed out')));
    s.on('error', reject);
    s.on('connect', () => {
      const extra = Object.entries(opts.headers ?? {}).map(([k, v]) => `${k}: ${v}\r\n`).join('');
      s.write(`GET ${p} HTTP/1.1\r\nHost: ${opts.host ?? `127.0.0.1:${daemonPort}`}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`);
    });
    s.on('data', (b: Buffer) => {
      buf = Buffer.concat([buf, b]);
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const status = Number(buf.subarray(0, end).toString().split(' ')[1]);
        if (status !== 101) {
          s.destroy();
          resolve({ status });
          return;
        }
        const accept = crypto.createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
        assert.match(buf.subarray(0, end).toString(), new RegExp(`sec-websocket-accept: ${accept.replace(/[+/]/g, '\\$&')}`, 'i'));
        upgraded = true;
        buf = buf.subarray(end + 4);
        const payload = Buffer.from(text);
        const mask = crypto.randomBytes(4);
        const framed = Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, Buffer.from(payload.map((x, i) => x ^ mask[i % 4]!))]);
        s.write(framed);
      }
      if (upgraded && buf.length >= 2 && buf.length >= 2 + (buf[1]! & 127)) {
        const reply = buf.subarray(2, 2 + (buf[1]! & 127)).toString();
        s.destroy();
        resolve({ status: 101, reply });
      }
    });
  });
}

async function sh(cmd: string, timeoutMs = 60_000) {
  const r = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd, timeoutMs });
  assert.equal(r.status, 200, r.text);
  return r.json as { exitCode: number; stdout: string; stderr: string };
}

const SERVER = `
import http.server, json, socketserver, threading, socket, hashlib, base64
class H(http.server.BaseHTTPRequestHandler):
    def _go(self):
        n = int(self.headers.get('content-length') or 0)
        body = self.rfile.read(n).decode() if n else ''
        out = json.dumps({'path': self.path, 'method': self.command, 'headers': {k.lower(): v for k, v in self.headers.items()}, 'body': body}).encode()
        self.send_response(200); self.send_header('content-type', 'application/json'); self.send_header('content-length', str(len(out))); self.end_headers(); self.wfile.write(out)
    do_GET = do_POST = do_PUT = _go
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer): daemon_threads = True
threading.Thread(target=S(('0.0.0.0', 8000), H).serve_forever, daemon=True).start()
def ws(c):
    d = b''
    while b'\\r\\n\\r\\n' not in d: d += c.recv(4096)
    key = [l.split(b':', 1)[1].strip() for l in d.split(b'\\r\\n') if l.lower().startswith(b'sec-websocket-key')][0]
    acc = base64.b64encode(hashlib.sha1(key + b'258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest())
    c.sendall(b'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Accept: ' + acc + b'\\r\\n\\r\\n')
    while True:
        h = c.recv(2)
        if len(h) < 2: return
        n = h[1] & 127; mask = c.recv(4); p = b''
        while len(p) < n: p += c.recv(n - len(p))
        p = bytes(b ^ mask[i % 4] for i, b in enumerate(p))
        if h[0] & 15 == 8: return
        r = b'echo:' + p
        c.sendall(bytes([0x81, len(r)]) + r)
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('0.0.0.0', 8765)); l.listen(8)
while True:
    c, _ = l.accept(); threading.Thread(target=ws, args=(c,), daemon=True).start()
`;

/** A one-package flat apt repository (Packages + Release) with a package that installs /usr/bin/capsule-hello. */
function buildRepo(): Map<string, Buffer> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-deb-'));
  try {
    fs.mkdirSync(path.join(dir, 'pkg/DEBIAN'), { recursive: true });
    fs.mkdirSync(path.join(dir, 'pkg/usr/bin'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'pkg/DEBIAN/control'), 'Package: capsule-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: Capsule tests <tests@capsule.invalid>\nDescription: says hello from the allowlisted mirror\n');
    fs.writeFileSync(path.join(dir, 'pkg/usr/bin/capsule-hello'), '#!/bin/sh\necho hello from an apt-installed package\n', { mode: 0o755 });
    execFileSync('dpkg-deb', ['--root-owner-group', '-b', path.join(dir, 'pkg'), path.join(dir, 'capsule-hello_1.0_all.deb')], { stdio: 'ignore' });
    const deb = fs.readFileSync(path.join(dir, 'capsule-hello_1.0_all.deb'));
    const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');
    const packages = Buffer.from(
      `Package: capsule-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: Capsule tests <tests@capsule.invalid>\nFilename: ./capsule-hello_1.0_all.deb\nSize: ${deb.length}\nSHA256: ${sha(deb)}\nDescription: says hello from the allowlisted mirror\n\n`,
    );
    const release = Buffer.from(`Origin: capsule-test\nLabel: capsule-test\nSuite: stable\nCodename: capsule\nDate: ${new Date().toUTCString()}\nSHA256:\n ${sha(packages)} ${packages.length} Packages\n`);
    return new Map([
      ['/capsule/Packages', packages],
      ['/capsule/Release', release],
      ['/capsule/capsule-hello_1.0_all.deb', deb],
    ]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('network: ports and egress in a debian sandbox', { timeout: 300_000 }, () => {
  before(async () => {
    web = await startInternet(['allowed.test', 'other.test']);
    const repo = buildRepo();
    mirror = http.createServer((req, res) => {
      mirrorHits.push(`${req.headers.host} ${req.url}`);
      const body = repo.get(path.posix.normalize(req.url ?? '')); // apt asks for /capsule/./Packages
      if (!body) return void res.writeHead(404).end();
      res.writeHead(200, { 'content-length': body.length }).end(req.method === 'HEAD' ? undefined : body);
    });
    await new Promise<void>((r) => mirror.listen(80, MIRROR.loopback, () => r()));
    const env = JSON.parse(web.env) as { hosts: Record<string, string>; routes: Record<string, string> };
    env.hosts[MIRROR.name] = MIRROR.address;
    env.routes[MIRROR.address] = MIRROR.loopback;
    d = await startTestDaemon({ env: { CAPSULE_NET_TEST_INTERNET: JSON.stringify(env) } });
    daemonPort = Number(new URL(d.url).port);
    const r = await api(d.url, 'POST', '/v1/sandboxes', {
      template: 'debian',
      timeoutMs: 600_000,
      network: { egress: { allow: ['allowed.test', `${MIRROR.name}:80`] } },
    });
    assert.equal(r.status, 201, r.text);
    id = r.json.id;
    await api(d.url, 'PUT', `/v1/sandboxes/${id}/files?path=/srv/server.py`, SERVER, { 'content-type': 'application/octet-stream' });
    const bg = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: 'python3 /srv/server.py', background: true });
    assert.equal(bg.status, 202, bg.text);
    for (let i = 0; i < 100; i++) {
      const up = await sh("python3 -c \"import socket; socket.create_connection(('127.0.0.1', 8765)); socket.create_connection(('127.0.0.1', 8000))\" 2>/dev/null; echo $?");
      if (up.stdout.trim() === '0') break;
      await new Promise((r) => setTimeout(r, 100));
    }
  });
  after(async () => {
    await d?.stop();
    await web?.close();
    await new Promise((r) => mirror?.close(r));
  });

  it('reaches an HTTP server inside through both URL forms with the token, and never without it', async () => {
    const a = (await api(d.url, 'GET', `/v1/sandboxes/${id}/network/ports/8000`)).json;
    assert.equal(a.url, `http://8000-${id}.localhost:${daemonPort}/`);
    assert.equal(a.pathUrl, `${d.url}/v1/sandboxes/${id}/ports/8000/`);
    const token = { 'x-capsule-port-token': a.token };
    const hostRouted = `8000-${id}.localhost:${daemonPort}`;

    for (const [label, r] of [
      ['path, no token', await request(`/v1/sandboxes/${id}/ports/8000/x`)],
      ['host, no token', await request('/x', { host: hostRouted })],
      ['host, wrong token', await request('/x', { host: hostRouted, headers: { 'x-capsule-port-token': 'nope' } })],
      ['host, API key only', await request('/x', { host: hostRouted, headers: { authorization: `Bearer ${d.adminKey}` } })],
    ] as const) {
      assert.equal(r.status, 401, `${label}: ${r.body}`);
      assert.equal(JSON.parse(r.body).error.code, 'unauthenticated');
    }
    const viaPath = await request(`/v1/sandboxes/${id}/ports/8000/hello?q=1`, { headers: { ...token, authorization: 'Bearer app-secret', cookie: 'app=1' } });
    assert.equal(viaPath.status, 200, viaPath.body);
    const seen = JSON.parse(viaPath.body);
    assert.equal(seen.path, '/hello?q=1');
    assert.equal(seen.headers['x-capsule-port-token'], undefined, 'the token never reaches the sandbox');
    assert.equal(seen.headers.authorization, 'Bearer app-secret', "the app's own Authorization passes through");
    assert.equal(seen.headers.cookie, 'app=1');
    assert.equal(seen.headers.host, 'localhost:8000');

    const viaHost = await request('/v1/sandboxes/inside?x=2', { host: hostRouted, headers: token, method: 'POST', body: '{"a":1}' });
    assert.equal(viaHost.status, 200, viaHost.body);
    assert.deepEqual([JSON.parse(viaHost.body).path, JSON.parse(viaHost.body).body], ['/v1/sandboxes/inside?x=2', '{"a":1}'], 'the whole path and the raw body go to the sandbox');

    // E2B's header name for the same token (E2B's getHost URLs are host-routed): accepted there, never forwarded.
    const viaE2b = await request('/e2b', { host: hostRouted, headers: { 'e2b-traffic-access-token': a.token } });
    assert.equal(viaE2b.status, 200, viaE2b.body);
    assert.equal(JSON.parse(viaE2b.body).headers['e2b-traffic-access-token'], undefined, 'the E2B header never reaches the sandbox');
    assert.equal((await request('/e2b', { host: hostRouted, headers: { 'e2b-traffic-access-token': 'nope' } })).status, 401);

    // The signed URL works alone, sets a cookie for the page's assets, and only for this port.
    const signed = new URL(a.signedUrl);
    const s1 = await request(`/page${signed.search}`, { host: hostRouted });
    assert.equal(s1.status, 200, s1.body);
    assert.equal(JSON.parse(s1.body).path, '/page', 'capsule_token is stripped');
    const cookie = String(s1.headers['set-cookie']).split(';')[0]!;
    assert.equal((await request('/asset.js', { host: hostRouted, headers: { cookie } })).status, 200);
    assert.equal(JSON.parse((await request('/asset.js', { host: hostRouted, headers: { cookie: `${cookie}; other=1` } })).body).headers.cookie, 'other=1');
    assert.equal((await request(`/page${signed.search}`, { host: `8765-${id}.localhost:${daemonPort}` })).status, 401, 'signed for 8000, not 8765');
    const expired = (await api(d.url, 'GET', `/v1/sandboxes/${id}/network/ports/8000?ttlMs=1000`)).json;
    await new Promise((r) => setTimeout(r, 2100));
    assert.equal((await request(`/p${new URL(expired.signedUrl).search}`, { host: hostRouted })).status, 401, 'an expired signature is refused');
  });

  it('forwards a WebSocket through both URL forms, with the token only', async () => {
    const a = (await api(d.url, 'GET', `/v1/sandboxes/${id}/network/ports/8765`)).json;
    const token = { 'x-capsule-port-token': a.token };
    assert.deepEqual(await wsEcho(`/v1/sandboxes/${id}/ports/8765/`, { headers: token }, 'hi-path'), { status: 101, reply: 'echo:hi-path' });
    assert.deepEqual(await wsEcho('/', { host: `8765-${id}.localhost:${daemonPort}`, headers: token }, 'hi-host'), { status: 101, reply: 'echo:hi-host' });
    assert.equal((await wsEcho(`/v1/sandboxes/${id}/ports/8765/`, {}, 'x')).status, 401);
    assert.equal((await wsEcho('/', { host: `8765-${id}.localhost:${daemonPort}` }, 'x')).status, 401);
  });

  it('a public port needs no token; a port with no server answers a clear error', async () => {
    assert.equal((await request(`/v1/sandboxes/${id}/ports/8000/`)).status, 401);
    const set = await api(d.url, 'PUT', `/v1/sandboxes/${id}/network`, { publicPorts: [8000] });
    assert.equal(set.status, 200, set.text);
    assert.deepEqual(set.json.publicPorts, [8000]);
    assert.equal((await request(`/v1/sandboxes/${id}/ports/8000/`)).status, 200);
    assert.equal((await request('/', { host: `8000-${id}.localhost:${daemonPort}` })).status, 200);
    assert.equal((await request(`/v1/sandboxes/${id}/ports/8765/`)).status, 401, 'only the public port');
    await api(d.url, 'PUT', `/v1/sandboxes/${id}/network`, { publicPorts: [8000, 9] });
    const none = await request(`/v1/sandboxes/${id}/ports/9/`);
    assert.equal(none.status, 422, none.body);
    assert.match(JSON.parse(none.body).error.message, /nothing listens/);
    await api(d.url, 'PUT', `/v1/sandboxes/${id}/network`, { publicPorts: [] });
  });

  it('HTTPS with SNI to the allowed name works from python, and the ledger counts its bytes', async () => {
    const site = web.sites['allowed.test']!;
    const before = site.hits.https;
    const r = await sh(
      `python3 -c "import ssl, urllib.request; c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE; print(urllib.request.urlopen('https://allowed.test:${site.httpsPort}/', context=c, timeout=10).read().decode())"`,
    );
    assert.equal(r.exitCode, 0, r.stderr);
    assert.match(r.stdout, /hello from allowed\.test over https/);
    assert.equal(site.hits.https, before + 1);
    assert.ok(site.hits.hosts.includes(`allowed.test:${site.httpsPort}`));
    const other = await sh(`python3 -c "import urllib.request; urllib.request.urlopen('https://other.test:${web.sites['other.test']!.httpsPort}/', timeout=5)" 2>&1; echo rc=$?`);
    assert.match(other.stdout, /Name or service not known|getaddrinfo failed|rc=1/);
    let e: any;
    for (let i = 0; i < 50 && !e; i++) {
      const log = (await api(d.url, 'GET', `/v1/sandboxes/${id}/network/log`)).json.entries;
      e = log.find((x: any) => x.port === site.httpsPort && x.state === 'closed');
      if (!e) await new Promise((res) => setTimeout(res, 20));
    }
    assert.equal(e.verdict, 'allowed');
    assert.equal(e.command, 'python3');
    assert.ok(e.bytesUp > 200 && e.bytesDown > 1000, `a TLS exchange both ways: ${e.bytesUp} up, ${e.bytesDown} down`);
  });

  it('installs a Debian package with apt-get when the allowlist names only the mirror', async () => {
    await sh('mkdir -p /etc/apt/sources.list.d.off && mv /etc/apt/sources.list.d/* /etc/apt/sources.list.d.off/ 2>/dev/null; true');
    await api(d.url, 'PUT', `/v1/sandboxes/${id}/files?path=/etc/apt/sources.list`, `deb [trusted=yes] http://${MIRROR.name}/capsule ./\n`, {
      'content-type': 'application/octet-stream',
    });
    mirrorHits = [];
    const upd = await sh('apt-get update 2>&1', 120_000);
    assert.equal(upd.exitCode, 0, upd.stdout);
    const inst = await sh('apt-get install -y capsule-hello 2>&1 && capsule-hello', 120_000);
    assert.equal(inst.exitCode, 0, inst.stdout);
    assert.match(inst.stdout, /hello from an apt-installed package/);
    assert.ok(mirrorHits.some((h) => h.startsWith(`${MIRROR.name} /capsule/`) && h.endsWith("capsule-hello_1.0_all.deb")), mirrorHits.join("\n"));
    // Anything but the mirror stays closed to apt: another name does not even resolve.
    const other = await sh(`printf 'deb [trusted=yes] http://other.test/x ./\\n' > /etc/apt/sources.list.d/other.list; apt-get update 2>&1; echo rc=$?`, 120_000);
    assert.match(other.stdout, /other\.test/);
    assert.equal(web.sites['other.test']!.hits.http, 0);
  });

  it('a restarted daemon keeps the relay and the policy; killing the sandbox leaves no network leftovers', async () => {
    const relay = netRelays(id);
    assert.equal(relay.length, 1);
    await d.kill();
    d = await startTestDaemon({ dataDir: d.dataDir, env: { CAPSULE_NET_TEST_INTERNET: web.env } });
    daemonPort = Number(new URL(d.url).port);
    assert.deepEqual(netRelays(id), relay, 'the same relay serves the adopted sandbox');
    const n = await api(d.url, 'GET', `/v1/sandboxes/${id}/network`);
    assert.deepEqual(n.json.egress, { allow: ['allowed.test', `${MIRROR.name}:80`] });
    const site = web.sites['allowed.test']!;
    const r = await sh(`python3 -c "import urllib.request; print(urllib.request.urlopen('http://allowed.test:${site.httpPort}/', timeout=10).read().decode())"`);
    assert.match(r.stdout, /hello from allowed\.test over http/, r.stderr);
    const dataDir = d.dataDir;
    await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
    assert.deepEqual(await settledLeftovers(id, dataDir), []);
  });
});
