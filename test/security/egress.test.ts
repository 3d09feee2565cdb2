/**
 * Escape battery, egress: a sandbox whose policy allows one name tries every
 * way around it. "The internet" is host loopback: HTTP, HTTPS and TCP echo
 * servers on 127.0.0.x that sandboxes know as 203.0.113.x (TEST-NET-3) through
 * the daemon's simulated internet, which never dials anything else. So no
 * packet of these tests leaves 127.0.0.0/8 or the sandboxes' own namespaces:
 * inside a sandbox every address is local (its relay's routes), and the daemon
 * refuses to dial an address the simulation does not map to loopback.
 *
 * Refusals are proven twice: the sandbox gets no answer, and the server that
 * stands for the destination counts no new connection.
 *
 * The same attacks run against microVMs (ADR 0017, networking): there the
 * guest's packets leave its eth0 into a host namespace of the VM's own that
 * holds only the tap and the same relay, so the guest's root (who may change
 * its own routes and addresses, and open raw sockets) still reaches nothing
 * but the daemon's gateway. gVisor has no gateway mode (no relay): skipped.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { api } from '../helpers/daemon.js';
import { startInternet, type Internet } from '../helpers/internet.js';
import { netRelays } from '../helpers/leftovers.js';
import { attack, createSandbox, forEachIsolation, per, probe1, sh, sleepMs, startBattery, stopBattery, type Battery } from './helpers.js';

let b: Battery;
let web: Internet;
const B = () => b;
/** The daemon's port stands for 203.0.113.1 too: a sandbox under `all` must still not reach it. */
const DAEMON_ALIAS = '203.0.113.1';
/** A private address mapped to the allowed site, to show private ranges need naming. */
const PRIVATE_ALIAS = '10.0.0.10';

async function standIn(id: string, name: string): Promise<string | null> {
  const r = await sh(b, id, `nslookup ${name} 2>&1`);
  const addrs = [...r.stdout.matchAll(/Address:\s*([0-9.]+)(?!:)\s*$/gm)].map((m) => m[1]!).filter((a) => a !== '198.18.0.53');
  return addrs[0] ?? null;
}

async function ledger(id: string, since = 0): Promise<any[]> {
  const r = await api(b.url, 'GET', `/v1/sandboxes/${id}/network/log?since=${since}`);
  assert.equal(r.status, 200, r.text);
  return r.json.entries;
}

async function lastCursor(id: string): Promise<number> {
  return (await api(b.url, 'GET', `/v1/sandboxes/${id}/network/log?limit=1000`)).json.cursor;
}

/** A real TLS ClientHello naming `servername`, captured on the host. */
async function clientHello(servername: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer((c) => {
      c.once('data', (d: Buffer) => {
        resolve(d);
        c.destroy();
        srv.close();
      });
    });
    srv.listen(0, '127.0.0.1', () => {
      const c = tls.connect({ host: '127.0.0.1', port: (srv.address() as net.AddressInfo).port, servername, rejectUnauthorized: false });
      c.on('error', () => undefined);
    });
    srv.on('error', reject);
  });
}

forEachIsolation('security: egress', (isolation) => {
  let id: string;
  let allowed: { name: string; address: string; httpPort: number; httpsPort: number; echoPort: number; hits: Internet['sites'][string]['hits'] };
  let other: typeof allowed;

  before(async () => {
    web = await startInternet(['allowed.test', 'other.test']);
    const env = JSON.parse(web.env) as { hosts: Record<string, string>; routes: Record<string, string> };
    env.routes[DAEMON_ALIAS] = '127.0.0.1';
    env.hosts['daemon.test'] = DAEMON_ALIAS;
    env.routes[PRIVATE_ALIAS] = web.sites['allowed.test']!.loopback;
    env.routes['2001:db8::10'] = web.sites['allowed.test']!.loopback;
    b = await startBattery(isolation, { env: { CAPSULE_NET_TEST_INTERNET: JSON.stringify(env) } });
    allowed = web.sites['allowed.test']!;
    other = web.sites['other.test']!;
    id = await createSandbox(b, { probes: ['net'], network: { egress: { allow: [`allowed.test:${allowed.httpPort},${allowed.httpsPort}`] } } });
  });
  after(async () => {
    await stopBattery(b);
    await web?.close();
  });

  attack(B, 'the allowed name works over HTTP and its ledger entry has the bytes each way', async () => {
    const ip = await standIn(id, 'allowed.test');
    assert.match(ip ?? '', /^198\.1[89]\./, 'the sandbox gets a stand-in address, never the real one');
    const since = await lastCursor(id);
    const before = allowed.hits.http;
    const req = 'GET / HTTP/1.0\r\nHost: allowed.test\r\n\r\n';
    const r = await sh(b, id, `printf '${req.replace(/\r/g, '\\r').replace(/\n/g, '\\n')}' | nc -w 5 ${ip} ${allowed.httpPort}`);
    assert.match(r.stdout, /hello from allowed\.test over http/);
    assert.equal(allowed.hits.http, before + 1);
    let tcp: any[] = [];
    for (let i = 0; i < 50 && !tcp.some((e) => e.state === 'closed'); i++) {
      tcp = (await ledger(id, since)).filter((e) => e.protocol === 'tcp');
      await sleepMs(20);
    }
    const closed = tcp.find((e) => e.state === 'closed')!;
    assert.ok(closed, JSON.stringify(tcp));
    assert.equal(closed.verdict, 'allowed');
    assert.equal(closed.name, 'allowed.test');
    assert.equal(closed.address, allowed.address);
    assert.equal(closed.port, allowed.httpPort);
    assert.equal(closed.bytesUp, Buffer.byteLength(req));
    assert.equal(closed.bytesDown, Buffer.byteLength(r.stdout), 'bytes down = what nc printed');
    // A container's relay finds the process behind a connection; a VM's processes are in the guest kernel.
    assert.equal(closed.command, per(b, { container: 'nc', gvisor: 'nc', microvm: null }));
    assert.ok(per(b, { container: closed.pid > 0, gvisor: closed.pid > 0, microvm: closed.pid === null }) && closed.durationMs >= 0);
  });

  attack(B, 'a denied name does not resolve and its server is never reached', async () => {
    const before = other.hits.http + other.hits.echo + other.hits.tlsConnections;
    assert.equal(await standIn(id, 'other.test'), null);
    const r = await sh(b, id, `nslookup other.test; echo rc=$?`);
    assert.match(r.stdout + r.stderr, /NXDOMAIN|can't find|rc=1/);
    const log = (await ledger(id)).filter((e) => e.protocol === 'dns' && e.name === 'other.test');
    assert.ok(log.length > 0 && log.every((e) => e.verdict === 'refused'));
    assert.equal(other.hits.http + other.hits.echo + other.hits.tlsConnections, before);
  });

  attack(B, 'a raw IP of the allowed server is refused (a domain rule holds only through its DNS)', async () => {
    const before = allowed.hits.http;
    const r = await probe1(b, id, 'net', ['tcp-talk', allowed.address, String(allowed.httpPort), 'GET / HTTP/1.0\r\nHost: allowed.test\r\n\r']);
    assert.match(r, /^(EOF|ECONNRESET|EPIPE)$/);
    assert.equal(allowed.hits.http, before);
    const e = (await ledger(id)).filter((x) => x.address === allowed.address && x.name === null).pop();
    assert.equal(e?.verdict, 'refused');
  });

  attack(B, 'direct TCP to a port the rule does not name is refused', async () => {
    const ip = (await standIn(id, 'allowed.test'))!;
    const before = allowed.hits.echo;
    assert.match(await probe1(b, id, 'net', ['tcp-talk', ip, String(allowed.echoPort), 'ping']), /^(EOF|ECONNRESET)$/);
    assert.equal(allowed.hits.echo, before);
  });

  attack(B, 'UDP, and DNS to an outside resolver, never leave', async () => {
    const ip = (await standIn(id, 'allowed.test'))!;
    for (const [host, port] of [[allowed.address, '53'], [ip, String(allowed.httpPort)], ['203.0.113.53', '53']] as const) {
      const r = await probe1(b, id, 'net', ['udp-send', host, port, '1000']);
      assert.ok(['EPERM', 'ETIMEDOUT', 'ECONNREFUSED'].includes(r), `${host}:${port} ${r}`);
    }
    const r = await sh(b, id, 'nslookup allowed.test 203.0.113.53 2>&1; echo rc=$?');
    assert.doesNotMatch(r.stdout, /Address:\s*198\./, 'no answer from an outside resolver');
    assert.equal(web.udpHits(), 0, 'the stand-in outside resolver got nothing');
  });

  attack(B, 'IPv6 (raw and IPv4-mapped) and ICMP fail', async () => {
    for (const v6 of ['2001:db8::10', `::ffff:${allowed.address}`]) {
      const r = await probe1(b, id, 'net', ['tcp-talk', v6, String(allowed.httpPort), 'GET / HTTP/1.0']);
      assert.doesNotMatch(r, /^REPLY/, `${v6}: ${r}`);
    }
    // A guest's root has raw sockets in its own kernel; what they send still ends in the VM's host namespace.
    assert.equal(await probe1(b, id, 'net', ['raw-socket']), per(b, { container: 'EPERM', gvisor: 'EPERM', microvm: 'OK' }));
    const ping = await sh(b, id, `ping -c 1 -W 1 ${allowed.address} 2>&1; echo rc=$?`);
    assert.doesNotMatch(ping.stdout, /rc=0/);
    assert.equal(await probe1(b, id, 'net', ['udp-send', '2001:db8::10', '53', '500']).then((r) => r === 'OK'), false);
    // IPv6 is refused by policy, not broken: named by a rule, the same address answers (a microVM's network is IPv4 only).
    if (b.isolation === 'microvm') return;
    const v6 = await createSandbox(b, { probes: ['net'], network: { egress: { allow: [`[2001:db8::/32]:${allowed.httpPort}`] } } });
    assert.match(await probe1(b, v6, 'net', ['tcp-talk', '2001:db8::10', String(allowed.httpPort), 'GET / HTTP/1.0\r\n\r']), /^REPLY:HTTP\/1\.[01] 200/);
  });

  attack(B, 'a spoofed TLS SNI or HTTP Host on the allowed address is refused (no fronting)', async () => {
    const ip = (await standIn(id, 'allowed.test'))!;
    const before = allowed.hits.http;
    const host = await probe1(b, id, 'net', ['tcp-talk', ip, String(allowed.httpPort), 'GET / HTTP/1.0\r\nHost: other.test\r\n\r']);
    assert.match(host, /^(EOF|ECONNRESET)$/);
    assert.equal(allowed.hits.http, before);
    const hello = await clientHello('other.test');
    const put = await api(b.url, 'PUT', `/v1/sandboxes/${id}/files?path=/tmp/hello.bin`, new Uint8Array(hello), { 'content-type': 'application/octet-stream' });
    assert.equal(put.status, 200, put.text);
    const tlsBefore = allowed.hits.tlsConnections;
    await sh(b, id, `nc -w 3 ${ip} ${allowed.httpsPort} < /tmp/hello.bin | wc -c`);
    assert.equal(allowed.hits.tlsConnections, tlsBefore, 'the TLS server never saw the connection');
    const e = (await ledger(id)).filter((x) => x.port === allowed.httpsPort).pop();
    assert.equal(e?.rule, 'sni-mismatch');
    // The same bytes naming the allowed name get through (so the refusal above was the SNI's).
    await api(b.url, 'PUT', `/v1/sandboxes/${id}/files?path=/tmp/good.bin`, new Uint8Array(await clientHello('allowed.test')), { 'content-type': 'application/octet-stream' });
    const good = await sh(b, id, `nc -w 2 ${ip} ${allowed.httpsPort} < /tmp/good.bin | wc -c`);
    assert.ok(Number(good.stdout.trim()) > 0, 'the server answered the good ClientHello');
    assert.equal(allowed.hits.tlsConnections, tlsBefore + 1);
  });

  attack(B, "the relay's own port, stale stand-ins and network changes are refused", async () => {
    if (b.isolation === 'microvm') return vmNetworkChanges();
    const listen = await sh(b, id, "cat /proc/net/tcp | awk 'NR>1 && $4==\"0A\" {print $2}'");
    const port = listen.stdout.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('0100007F:')).map((l) => parseInt(l.split(':')[1]!, 16))[0];
    assert.ok(port, `the relay listens on the sandbox loopback: ${listen.stdout}`);
    assert.match(await probe1(b, id, 'net', ['tcp-talk', '127.0.0.1', String(port), 'x']), /^(EOF|ECONNRESET)$/);
    assert.match(await probe1(b, id, 'net', ['tcp-talk', '198.19.250.1', String(allowed.httpPort), 'x']), /^(EOF|ECONNRESET)$/);
    const r = await sh(b, id, 'ip route del local 0.0.0.0/0 dev lo table local; echo rc=$?; ip link set lo down; echo rc=$?');
    assert.equal((r.stdout.match(/rc=0/g) ?? []).length, 0, r.stdout + r.stderr);
    const ps = await sh(b, id, 'ps -o comm 2>/dev/null || ls /proc');
    assert.doesNotMatch(ps.stdout, /netrelay/, 'the relay is not visible inside');
    assert.equal(netRelays(id).length, 1, 'one relay on the host');
    const status = fs.readFileSync(`/proc/${netRelays(id)[0]}/status`, 'utf8');
    assert.match(status, /^NoNewPrivs:\s+1$/m);
    assert.match(status, /^Seccomp:\s+2$/m, 'the relay serves under its seccomp allowlist');
  });

  /**
   * The microVM form: the relay is not in the guest at all, and the guest's root may rewrite its own
   * network (routes, addresses, the tap's peer); every TCP connection still lands in the relay and the policy.
   */
  async function vmNetworkChanges(): Promise<void> {
    const other = web.sites['other.test']!;
    const before = other.hits.http + allowed.hits.http + allowed.hits.echo;
    const get = 'GET / HTTP/1.0\r\n\r';
    // The host end of the tap (where the relay listens) and the daemon's port on it: refused like any private address.
    for (const port of [b.port, 53, 80]) assert.doesNotMatch(await probe1(b, id, 'net', ['tcp-talk', '169.254.200.1', String(port), get]), /^REPLY/);
    assert.match(await probe1(b, id, 'net', ['tcp-talk', '198.19.250.1', String(allowed.httpPort), 'x']), /^(EOF|ECONNRESET)$/);
    // Guest root rewrites its network: another source address, a direct route to the site. Nothing changes outside.
    const r = await sh(b, id, 'ip addr add 203.0.113.99/32 dev eth0; echo rc=$?; ip route add 203.0.113.0/24 dev eth0 src 203.0.113.99; echo rc=$?');
    assert.equal((r.stdout.match(/rc=0/g) ?? []).length, 2, `the guest's root may change its own routes: ${r.stdout}${r.stderr}`);
    for (const site of [other, allowed]) {
      assert.doesNotMatch(await probe1(b, id, 'net', ['tcp-talk', site.address, String(site.httpPort), get]), /^REPLY/);
    }
    assert.equal(other.hits.http + allowed.hits.http + allowed.hits.echo, before);
    await sh(b, id, 'ip route del 203.0.113.0/24 dev eth0; ip addr del 203.0.113.99/32 dev eth0');
    const ps = await sh(b, id, 'ps -o comm 2>/dev/null || ls /proc');
    assert.doesNotMatch(ps.stdout, /netrelay/, 'the relay is not in the guest');
    assert.equal(netRelays(id).length, 1, 'one relay on the host');
    const status = fs.readFileSync(`/proc/${netRelays(id)[0]}/status`, 'utf8');
    assert.match(status, /^NoNewPrivs:\s+1$/m);
    assert.match(status, /^Seccomp:\s+2$/m, 'the relay serves under its seccomp allowlist');
  }

  attack(B, "under all: the daemon's own port, private ranges and this host stay unreachable unless named", async () => {
    const sbx = await createSandbox(b, { probes: ['net'], network: { egress: 'all' } });
    const before = allowed.hits.http;
    const get = 'GET / HTTP/1.0\r\n\r'; // tcp-talk adds the last \n
    // The daemon, by name, by its simulated address, through the slirp-style gateway and on loopback.
    const dIp = (await standIn(sbx, 'daemon.test'))!;
    for (const [host, port] of [[dIp, b.port], [DAEMON_ALIAS, b.port], ['10.0.2.2', b.port], ['127.0.0.1', b.port]] as const) {
      const r = await probe1(b, sbx, 'net', ['tcp-talk', host, String(port), get]);
      assert.doesNotMatch(r, /^REPLY/, `daemon via ${host}: ${r}`);
    }
    const log = await ledger(sbx);
    assert.ok(log.some((e) => e.rule === 'daemon'), JSON.stringify(log.map((e) => e.rule)));
    // A private address that really leads to the allowed site: refused under all...
    assert.match(await probe1(b, sbx, 'net', ['tcp-talk', PRIVATE_ALIAS, String(allowed.httpPort), get]), /^(EOF|ECONNRESET)$/);
    assert.equal(allowed.hits.http, before);
    // ...while a public one is fine (so the refusal above is the range's, not the route's).
    assert.match(await probe1(b, sbx, 'net', ['tcp-talk', allowed.address, String(allowed.httpPort), get]), /^REPLY:HTTP\/1\.[01] 200/);
    // Named explicitly, the private range opens; the daemon's port never does.
    const set = await api(b.url, 'PUT', `/v1/sandboxes/${sbx}/network`, { egress: { allow: ['*', '10.0.0.0/8', `${DAEMON_ALIAS}/32`, '127.0.0.0/8'] } });
    assert.equal(set.status, 200, set.text);
    assert.match(await probe1(b, sbx, 'net', ['tcp-talk', PRIVATE_ALIAS, String(allowed.httpPort), get]), /^REPLY:HTTP\/1\.[01] 200/);
    assert.doesNotMatch(await probe1(b, sbx, 'net', ['tcp-talk', DAEMON_ALIAS, String(b.port), get]), /^REPLY/);
    const r = await api(b.url, 'GET', '/v1/health');
    assert.equal(r.status, 200);
  });

  attack(B, 'a live policy change holds within a second, and closes connections it no longer allows', async () => {
    const sbx = await createSandbox(b, { probes: ['net'], network: { egress: { allow: ['allowed.test'] } } });
    const ip = (await standIn(sbx, 'allowed.test'))!;
    const talk = () => probe1(b, sbx, 'net', ['tcp-talk', ip, String(allowed.echoPort), 'ping']);
    assert.equal(await talk(), 'REPLY:ping');
    const stillOpen = async () => {
      const log = (await ledger(sbx)).filter((e) => e.port === allowed.echoPort);
      const closedIds = new Set(log.filter((e) => e.state === 'closed').map((e) => e.id));
      return log.filter((e) => e.state === 'open' && !closedIds.has(e.id));
    };
    // The probe's own connection is logged closed a moment after it ends: wait for that first, so the
    // one open connection counted below is the long one (it was sometimes counted as a second).
    for (let i = 0; i < 100 && (await stillOpen()).length > 0; i++) await sleepMs(20);
    // A long connection: a background nc holding the echo server.
    await sh(b, sbx, `(sleep 30 | nc ${ip} ${allowed.echoPort}) >/dev/null 2>&1 &`, { background: true });
    for (let i = 0; i < 100 && (await stillOpen()).length === 0; i++) await sleepMs(20);
    assert.equal((await stillOpen()).length, 1, 'the long connection is open');
    const t0 = Date.now();
    const set = await api(b.url, 'PUT', `/v1/sandboxes/${sbx}/network`, { egress: 'none' });
    assert.equal(set.status, 200, set.text);
    assert.match(await talk(), /^(EOF|ECONNRESET)$/);
    assert.ok(Date.now() - t0 < 1000 + 3000, 'refused right after the change');
    const closed = (await ledger(sbx)).filter((e) => e.rule === 'none' && e.state === 'closed' && e.verdict === 'refused');
    assert.ok(closed.some((e) => /policy changed/.test(e.reason)), 'the open connection was closed by the change');
    await api(b.url, 'PUT', `/v1/sandboxes/${sbx}/network`, { egress: { allow: ['allowed.test'] } });
    assert.equal(await talk(), 'REPLY:ping');
  });
}, { microvm: true, gvisor: 'gVisor has no gateway network mode (no relay), so there is no egress to attack' });
