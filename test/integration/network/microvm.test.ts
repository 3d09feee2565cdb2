/**
 * The `gateway` network mode on the microVM backend (ADR 0017, networking):
 * a busybox VM whose policy allows one name reaches that name's server (on
 * host loopback, through the daemon's simulated internet), is refused
 * another, gets its DNS from the daemon, and has a server inside reached
 * through the daemon's port proxy (the relay connects to the guest's
 * address). Once killed nothing is left: no QEMU, relay, tap namespace or
 * files. A VM made with network `none` still has no network device. No packet
 * of these tests leaves 127.0.0.0/8 or the VM's own namespace.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import { api, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { startInternet, type Internet } from '../../helpers/internet.js';
import { netRelays, settledLeftovers } from '../../helpers/leftovers.js';
import { microvmSkip } from '../../helpers/microvm.js';

let d: TestDaemon;
let dataDir: string;
let web: Internet;
let id: string;

async function sh(sandbox: string, cmd: string, timeoutMs = 30_000) {
  const r = await api(d.url, 'POST', `/v1/sandboxes/${sandbox}/commands`, { cmd, timeoutMs });
  assert.equal(r.status, 200, r.text);
  return r.json as { exitCode: number; stdout: string; stderr: string };
}

/** The address the sandbox's DNS (the daemon) gives for name, or null when it is refused. */
async function standIn(sandbox: string, name: string): Promise<string | null> {
  const r = await sh(sandbox, `nslookup ${name} 2>&1`);
  const addrs = [...r.stdout.matchAll(/Address:\s*([0-9.]+)(?!:)\s*$/gm)].map((m) => m[1]!).filter((a) => a !== '198.18.0.53');
  return addrs[0] ?? null;
}

function get(port: number, p: string, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: p, headers }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

describe('network: gateway mode in a microVM', { skip: microvmSkip(), timeout: 5 * 60_000 }, () => {
  before(async () => {
    web = await startInternet(['allowed.test', 'other.test']);
    dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir, env: { CAPSULE_MICROVM_ALLOW_TCG: '1', CAPSULE_NET_TEST_INTERNET: web.env } });
    const allowed = web.sites['allowed.test']!;
    const t0 = performance.now();
    const r = await api(d.url, 'POST', '/v1/sandboxes', {
      template: 'busybox',
      isolation: 'microvm',
      timeoutMs: 600_000,
      resources: { cpus: 1, memoryMb: 256 },
      network: { egress: { allow: [`allowed.test:${allowed.httpPort}`] } },
    });
    assert.equal(r.status, 201, `${r.text}\n${d.log().slice(-3000)}`);
    id = r.json.id;
    console.log(`# microVM with gateway network created in ${Math.round(performance.now() - t0)} ms`);
  });
  after(async () => {
    await d?.stop();
    await web?.close();
    if (dataDir) await removeDataDir(dataDir);
  });

  it('lists gateway among the microvm backend network modes', async () => {
    const info = (await api(d.url, 'GET', '/v1/info')).json as {
      backends: Array<{ isolation: string; capabilities?: { network: string[]; networkAfterCreate?: boolean } }>;
    };
    const vmCaps = info.backends.find((b) => b.isolation === 'microvm')?.capabilities;
    assert.deepEqual(vmCaps?.network, ['none', 'gateway']);
    // Clients can tell beforehand that a VM made without a network never gets one; containers can (absent).
    assert.equal(vmCaps?.networkAfterCreate, false);
    assert.equal(info.backends.find((b) => b.isolation === 'container')?.capabilities?.networkAfterCreate, undefined);
  });

  it('reaches the allowed name, with DNS from the daemon and a ledger entry', async () => {
    const allowed = web.sites['allowed.test']!;
    const before = allowed.hits.http;
    assert.match((await sh(id, 'cat /etc/resolv.conf')).stdout, /nameserver 198\.18\.0\.53/);
    const ip = await standIn(id, 'allowed.test');
    assert.match(ip ?? '', /^198\.1[89]\./, 'a stand-in address from the daemon');
    const t0 = performance.now();
    const r = await sh(id, `printf 'GET / HTTP/1.0\\r\\nHost: allowed.test\\r\\n\\r\\n' | nc -w 10 ${ip} ${allowed.httpPort}`);
    const ms = Math.round(performance.now() - t0);
    assert.match(r.stdout, /hello from allowed\.test over http/, JSON.stringify(r));
    assert.equal(allowed.hits.http, before + 1);
    console.log(`# one HTTP request through the gateway from the guest (command round trip included): ${ms} ms`);
    let tcp: Array<{ verdict: string; name: string | null; port: number; state: string; bytesDown: number }> = [];
    for (let i = 0; i < 50 && !tcp.some((e) => e.state === 'closed'); i++) {
      tcp = ((await api(d.url, 'GET', `/v1/sandboxes/${id}/network/log`)).json.entries as Array<typeof tcp[number] & { protocol: string }>).filter((e) => e.protocol === 'tcp');
      await new Promise((res) => setTimeout(res, 20));
    }
    const closed = tcp.find((e) => e.state === 'closed');
    assert.ok(closed, JSON.stringify(tcp));
    assert.deepEqual([closed.verdict, closed.name, closed.port, closed.bytesDown], ['allowed', 'allowed.test', allowed.httpPort, Buffer.byteLength(r.stdout)]);
  });

  it('is refused a denied name, a raw address and an unnamed port; the servers see nothing', async () => {
    const allowed = web.sites['allowed.test']!;
    const other = web.sites['other.test']!;
    const before = other.hits.http + other.hits.echo + allowed.hits.echo + allowed.hits.http;
    assert.equal(await standIn(id, 'other.test'), null);
    const ip = (await standIn(id, 'allowed.test'))!;
    for (const target of [`${other.address} ${other.httpPort}`, `${allowed.address} ${allowed.httpPort}`, `${ip} ${allowed.echoPort}`]) {
      const r = await sh(id, `echo ping | nc -w 3 ${target}; echo rc=$?`);
      assert.doesNotMatch(r.stdout, /ping\n|hello/, target);
    }
    assert.equal(other.hits.http + other.hits.echo + allowed.hits.echo + allowed.hits.http, before);
  });

  it('exposes a port of a server inside the VM through the daemon', async () => {
    await sh(id, 'mkdir -p /www && echo "served from inside the vm" > /www/index.html');
    const bg = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: 'httpd -f -p 8080 -h /www', background: true });
    assert.equal(bg.status, 202, bg.text);
    const a = (await api(d.url, 'GET', `/v1/sandboxes/${id}/network/ports/8080`)).json as { token: string };
    const port = Number(new URL(d.url).port);
    const denied = await get(port, `/v1/sandboxes/${id}/ports/8080/`, {});
    assert.notEqual(denied.status, 200, 'no token, no access');
    let r = { status: 0, body: '' };
    for (let i = 0; i < 50 && r.status !== 200; i++) {
      r = await get(port, `/v1/sandboxes/${id}/ports/8080/`, { 'x-capsule-port-token': a.token });
      if (r.status !== 200) await new Promise((res) => setTimeout(res, 100));
    }
    assert.equal(r.status, 200, r.body);
    assert.equal(r.body, 'served from inside the vm\n');
  });

  it('survives a daemon SIGKILL: the relay keeps serving the re-adopted VM, and one that died is started again', async () => {
    const relay = netRelays(id);
    assert.equal(relay.length, 1);
    await d.kill();
    // Back with a warm pool of network-less VMs, for the next test.
    d = await startTestDaemon({ dataDir, env: { CAPSULE_MICROVM_ALLOW_TCG: '1', CAPSULE_NET_TEST_INTERNET: web.env, CAPSULE_POOL: 'busybox:microvm=1' } });
    assert.deepEqual(netRelays(id), relay, 'the same relay (the VM and its namespace live on)');
    const allowed = web.sites['allowed.test']!;
    const ip = await standIn(id, 'allowed.test');
    const r = await sh(id, `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 ${ip} ${allowed.httpPort}`);
    assert.match(r.stdout, /hello from allowed\.test/);
    process.kill(relay[0]!, 'SIGKILL');
    for (let i = 0; i < 100 && netRelays(id).length > 0; i++) await new Promise((res) => setTimeout(res, 20));
    const a = (await api(d.url, 'GET', `/v1/sandboxes/${id}/network/ports/8080`)).json as { token: string };
    const got = await get(Number(new URL(d.url).port), `/v1/sandboxes/${id}/ports/8080/`, { 'x-capsule-port-token': a.token });
    assert.equal(got.status, 200, got.body);
    assert.equal(got.body, 'served from inside the vm\n');
    assert.equal(netRelays(id).length, 1, 'a new relay');
    assert.notDeepEqual(netRelays(id), relay);
  });

  it('a create with egress is not served a pooled VM (booted without a network device): it boots its own', async () => {
    type Pool = { isolation: string; ready: number; claims: number };
    const pool = async () => ((await api(d.url, 'GET', '/v1/info')).json.pools as Pool[]).find((p) => p.isolation === 'microvm')!;
    for (let i = 0; i < 300 && (await pool()).ready < 1; i++) await new Promise((res) => setTimeout(res, 100));
    assert.equal((await pool()).ready, 1, 'the pool has a VM ready');
    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', isolation: 'microvm', network: { egress: 'all' } });
    assert.equal(r.status, 201, r.text);
    try {
      assert.equal((await pool()).claims, 0, 'not claimed from the pool');
      assert.match((await sh(r.json.id, 'ls /sys/class/net')).stdout, /eth0/);
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${r.json.id}`);
    }
  });

  it('a VM made with public ports only gets its network device at boot (it cannot get one later)', async () => {
    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', isolation: 'microvm', resources: { cpus: 1, memoryMb: 128 }, network: { publicPorts: [8080] } });
    assert.equal(r.status, 201, r.text);
    const vm = r.json.id as string;
    try {
      assert.equal((await sh(vm, 'ls /sys/class/net | tr "\\n" " "')).stdout.trim(), 'eth0 lo');
      await sh(vm, 'mkdir -p /www && echo public > /www/index.html');
      await api(d.url, 'POST', `/v1/sandboxes/${vm}/commands`, { cmd: 'httpd -f -p 8080 -h /www', background: true });
      let got = { status: 0, body: '' };
      for (let i = 0; i < 50 && got.status !== 200; i++) {
        got = await get(Number(new URL(d.url).port), `/v1/sandboxes/${vm}/ports/8080/`, {});
        if (got.status !== 200) await new Promise((res) => setTimeout(res, 100));
      }
      assert.deepEqual(got, { status: 200, body: 'public\n' });
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${vm}`);
    }
  });

  it('a VM made with network none has no network device, and cannot be given one later', async () => {
    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', isolation: 'microvm', resources: { cpus: 1, memoryMb: 128 } });
    assert.equal(r.status, 201, r.text);
    const plain = r.json.id as string;
    try {
      assert.equal((await sh(plain, 'ls /sys/class/net')).stdout.trim(), 'lo');
      const set = await api(d.url, 'PUT', `/v1/sandboxes/${plain}/network`, { egress: 'all' });
      assert.equal(set.status, 409, set.text);
      assert.match(set.text, /without a network device/);
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${plain}`);
    }
  });

  it('is killed with nothing left: no QEMU, relay, namespace or files', async () => {
    assert.equal(netRelays(id).length, 1, 'one relay while it runs');
    const del = await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
    assert.ok(del.status === 204 || del.status === 200, del.text);
    assert.deepEqual(await settledLeftovers(id, dataDir), []);
    assert.deepEqual(netRelays(id), []);
  });
});
