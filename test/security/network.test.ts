/**
 * Escape battery, network: a sandbox without egress (the default, `none`) has a
 * private network namespace with loopback only. The daemon's API on the host's
 * 127.0.0.1, the slirp-style gateway 10.0.2.2, metadata and "internet"
 * addresses are unreachable; raw and packet sockets are refused; ports opened
 * inside are not on the host.
 *
 * No probe may send a packet outside 127.0.0.0/8 even if isolation broke: the
 * daemon runs with a simulated internet (test/helpers/internet.ts) in which
 * every address probed here leads to a loopback server that counts what reaches
 * it, and the daemon dials nothing else. (test/security/egress.test.ts attacks
 * sandboxes that do have egress.)
 *
 * Under microvm the VM has no network device at all (network 'none' is all it supports): the guest's root
 * may open raw sockets and change its own addresses and routes, but there is no device to send through,
 * so nothing leaves the VM. The stand-in servers count what would have.
 */
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { attack, assertDaemonAnswers, createSandbox, per, probe1, sh, sleepMs, forEachIsolation, startBattery, stopBattery, type Battery } from './helpers.js';
import { startInternet, type Internet } from '../helpers/internet.js';
import { api } from '../helpers/daemon.js';

let b: Battery;
let id: string;
let web: Internet;
const B = () => b;
/** Addresses a sandbox might try for the host, its gateway, cloud metadata and the internet: each one leads to a loopback server here. */
const PROBED = ['10.0.2.2', '10.0.2.3', '172.17.0.1', '169.254.169.254', '1.1.1.1', '8.8.8.8', '203.0.113.10'];

function hostConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.setTimeout(2000);
    s.once('connect', () => {
      s.destroy();
      resolve('OK');
    });
    s.once('timeout', () => {
      s.destroy();
      resolve('ETIMEDOUT');
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });
}

forEachIsolation('security: network', (isolation) => {
  before(async () => {
    web = await startInternet(['internet.test']);
    const env = JSON.parse(web.env) as { hosts: Record<string, string>; routes: Record<string, string> };
    for (const ip of PROBED) env.routes[ip] = web.sites['internet.test']!.loopback;
    b = await startBattery(isolation, { env: { CAPSULE_NET_TEST_INTERNET: JSON.stringify(env) } });
    id = await createSandbox(b, { probes: ['net'] });
  });
  after(async () => {
    await stopBattery(b);
    await web?.close();
  });

  attack(B, 'interfaces: only loopback exists inside', async () => {
    const r = await sh(b, id, 'tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " "');
    assert.deepEqual(r.stdout.split('\n').filter(Boolean), ['lo']);
    const routes = await sh(b, id, 'tail -n +2 /proc/net/route | wc -l');
    assert.equal(routes.stdout.trim(), '0', 'no IPv4 routes besides loopback');
  });

  attack(B, 'raw sockets (AF_INET, AF_INET6) and packet sockets are refused (no CAP_NET_RAW)', async () => {
    if (b.isolation === 'microvm') {
      // The VM's root holds CAP_NET_RAW in its kernel; with only lo inside, a raw socket reaches nothing else.
      for (const a of ['raw-socket', 'raw6-socket', 'packet-socket']) assert.equal(await probe1(b, id, 'net', [a]), 'OK', a);
      const devs = await sh(b, id, 'ls /sys/class/net');
      assert.equal(devs.stdout, 'lo\n', 'no network device but loopback');
      return;
    }
    assert.equal(await probe1(b, id, 'net', ['raw-socket']), 'EPERM');
    assert.equal(await probe1(b, id, 'net', ['raw6-socket']), 'EPERM');
    assert.equal(await probe1(b, id, 'net', ['packet-socket']), 'EPERM');
    const ping = await sh(b, id, 'ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1; echo rc=$?');
    assert.doesNotMatch(ping.stdout, /rc=0/, 'busybox ping needs a raw socket it does not get');
  });

  attack(B, "the daemon's API port on the host's 127.0.0.1 and ::1 is unreachable from inside", async () => {
    assert.equal(await probe1(b, id, 'net', ['connect', '127.0.0.1', String(b.port)]), 'ECONNREFUSED', "127.0.0.1 is the sandbox's own loopback");
    assert.equal(await probe1(b, id, 'net', ['connect', '::1', String(b.port)]), 'ECONNREFUSED');
    const nc = await sh(b, id, `echo -e "GET /v1/sandboxes HTTP/1.0\\r\\n\\r\\n" | nc -w 2 127.0.0.1 ${b.port}; echo rc=$?`);
    assert.doesNotMatch(nc.stdout, /HTTP\/1/, 'got an HTTP answer from the daemon');
    assert.doesNotMatch(nc.stdout, /rc=0/);
    await assertDaemonAnswers(b);
  });

  attack(B, 'the host gateway (10.0.2.2), cloud metadata and the internet are unreachable', async () => {
    const site = web.sites['internet.test']!;
    for (const ip of PROBED) {
      for (const port of [b.port, site.httpPort]) {
        const r = await probe1(b, id, 'net', ['connect', ip, String(port), '1000']);
        // gVisor's netstack (--network=none) says EHOSTUNREACH for the same thing: no route, nothing sent.
        assert.equal(r, per(b, { container: 'ENETUNREACH', gvisor: 'EHOSTUNREACH', microvm: 'ENETUNREACH' }), `${ip}:${port}: no route at all`);
      }
    }
    const nc = await sh(b, id, `nc -w 2 10.0.2.2 ${b.port} </dev/null; echo rc=$?`);
    assert.doesNotMatch(nc.stdout, /rc=0/);
    const dns = await sh(b, id, 'nslookup internet.test 203.0.113.53 >/dev/null 2>&1; echo rc=$?');
    assert.doesNotMatch(dns.stdout, /rc=0/);
    assert.equal(site.hits.http + site.hits.echo + site.hits.tlsConnections, 0, 'no stand-in server saw anything');
    assert.equal(web.udpHits(), 0);
    const log = await api(b.url, 'GET', `/v1/sandboxes/${id}/network/log`);
    assert.deepEqual(log.json.entries, [], 'a sandbox without egress has no gateway, so nothing even reaches the daemon');
  });

  attack(B, 'network configuration changes are refused (no CAP_NET_ADMIN): addresses, routes, link state', async () => {
    if (b.isolation === 'microvm') {
      // The VM's root configures its own kernel's loopback: a default route through lo keeps the "gateway"
      // inside the VM. Nothing reaches the stand-ins (lo is left up: later attacks use it).
      const r = await sh(b, id, 'ip addr add 10.9.9.9/24 dev lo; echo rc=$?; ip route add default dev lo; echo rc=$?');
      assert.equal((r.stdout.match(/rc=0/g) ?? []).length, 2, r.stdout + r.stderr);
      const site = web.sites['internet.test']!;
      // lo drops a packet for an address that is not local (ETIMEDOUT): it never leaves the VM.
      const c = await probe1(b, id, 'net', ['connect', '10.0.2.2', String(site.httpPort), '1000']);
      assert.ok(['ETIMEDOUT', 'ECONNREFUSED', 'ENETUNREACH'].includes(c), `10.0.2.2 through lo: ${c}`);
      await sh(b, id, 'ip route del default dev lo; ip addr del 10.9.9.9/24 dev lo');
      assert.equal(site.hits.http + site.hits.echo + site.hits.tlsConnections, 0, 'no stand-in server saw anything');
      assert.equal(web.udpHits(), 0);
      return;
    }
    const r = await sh(b, id, 'ip addr add 10.9.9.9/24 dev lo; echo rc=$?; ip route add default dev lo; echo rc=$?; ip link set lo down; echo rc=$?; ip link add x type dummy; echo rc=$?');
    assert.equal((r.stdout.match(/rc=0/g) ?? []).length, 0, r.stdout + r.stderr);
    assert.match(r.stderr, per(b, { container: /Operation not permitted/, gvisor: /Permission denied/ }));
    const up = await sh(b, id, 'cat /sys/class/net/lo/operstate; ip -4 addr show lo | grep -c 10.9.9.9');
    assert.match(up.stdout, /^0$/m);
  });

  attack(B, 'a port opened inside the sandbox is not reachable from the host', async () => {
    let port = 0;
    for (let i = 0; i < 10 && port === 0; i++) {
      const p = 20000 + Math.floor(Math.random() * 20000);
      if ((await hostConnect(p)) === 'ECONNREFUSED') port = p;
    }
    assert.ok(port > 0, 'found a free host port');
    await sh(b, id, ['/probes/net', 'tcp-listen', String(port), '5'], { background: true, timeoutMs: 10_000 });
    await sleepMs(200);
    assert.equal(await probe1(b, id, 'net', ['connect', '127.0.0.1', String(port)]), 'OK', 'the listener is up inside');
    assert.equal(await hostConnect(port), 'ECONNREFUSED', 'the host does not see it');
  });
}, { microvm: true });
