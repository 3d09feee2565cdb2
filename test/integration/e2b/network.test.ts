/**
 * E2B's port traffic and sandbox logs against a real daemon and real busybox sandboxes, with the
 * unmodified `e2b` SDK (pointed at Capsule by E2B_API_URL and E2B_SANDBOX_URL), next to the native
 * API views of the same services:
 *  - `allowPublicTraffic`: a server inside (busybox httpd) reached at `sandbox.getHost(port)`, public by
 *    default, and with `false` refused without E2B's traffic token and served with it; the native
 *    "every port public" setting (`publicPorts: 'all'`) set at create and while running;
 *  - sandbox logs: lifecycle and command events, through the native API and E2B's two log routes.
 * Requests to `<port>-<id>.localhost` go to 127.0.0.1 with that Host header (getaddrinfo may not
 * resolve *.localhost), exactly what a browser sends.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import { Sandbox } from 'e2b';
import { api, CLI, removeDataDir, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';

const skip = process.getuid?.() !== 0 ? 'needs root (real crun sandboxes with the network relay)' : false;

let d: TestDaemon;
let daemonPort: number;
let key: string;
const made: Sandbox[] = [];
const nativeIds: string[] = [];

function e2bKey(name: string, owner?: string): string {
  const r = spawnSync(process.execPath, [CLI, 'keys', 'create', '--e2b', '--name', name, ...(owner ? ['--owner', owner] : [])], {
    env: { ...process.env, CAPSULE_URL: d.url, CAPSULE_API_KEY: d.adminKey ?? '' },
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim();
}

async function create(opts: Parameters<typeof Sandbox.create>[1] = {}): Promise<Sandbox> {
  const s = await Sandbox.create('busybox', { allowInternetAccess: false, ...opts });
  made.push(s);
  return s;
}

/** GET through the daemon with a given Host header. */
function get(host: string, p = '/', headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: daemonPort, path: p, headers: { host, ...headers } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** busybox httpd on `port`, serving one page (it daemonizes itself). */
async function serve(s: Sandbox, port: number, text: string): Promise<void> {
  await s.commands.run(`mkdir -p /www && echo ${text} > /www/index.html && httpd -p ${port} -h /www`);
}

describe('E2B port traffic and sandbox logs against Capsule', { skip, timeout: 5 * 60_000 }, () => {
  before(async () => {
    d = await startTestDaemon();
    daemonPort = Number(new URL(d.url).port);
    key = e2bKey('e2b-net');
    process.env.E2B_API_KEY = key;
    process.env.E2B_API_URL = `${d.url}/e2b`;
    process.env.E2B_SANDBOX_URL = d.url;
  });
  after(async () => {
    for (const s of made) await s.kill().catch(() => undefined);
    for (const id of nativeIds) await api(d.url, 'DELETE', `/v1/sandboxes/${id}`).catch(() => undefined);
    delete process.env.E2B_API_KEY;
    delete process.env.E2B_API_URL;
    delete process.env.E2B_SANDBOX_URL;
    await d?.stop();
    if (d) await removeDataDir(d.dataDir);
  });

  it("serves a sandbox's port at getHost(port) without a token by default (allowPublicTraffic: true)", async () => {
    const s = await create();
    await serve(s, 8000, 'public-page');
    const host = s.getHost(8000);
    assert.equal(host, `8000-${s.sandboxId}.localhost:${daemonPort}`);
    const r = await get(host);
    assert.equal(r.status, 200, `${s.sandboxId}: ${r.body}`);
    assert.equal(r.body, 'public-page\n');
    const net = await api(d.url, 'GET', `/v1/sandboxes/${s.sandboxId}/network`);
    assert.equal(net.json.publicPorts, 'all', 'the native view shows every port public');
    const info = await s.getInfo();
    assert.equal(info.network?.allowPublicTraffic, true);
    assert.equal(info.allowInternetAccess, false);
    assert.deepEqual(info.network?.denyOut, ['0.0.0.0/0']);
    // Every port, not only one: a second server is public too.
    await serve(s, 8001, 'second');
    assert.equal((await get(s.getHost(8001))).body, 'second\n');
  });

  it('with allowPublicTraffic: false, refuses getHost(port) without the traffic token and serves it with the token', async () => {
    const s = await create({ network: { allowPublicTraffic: false } });
    assert.ok(s.trafficAccessToken, `${s.sandboxId}: the create answer carries trafficAccessToken`);
    assert.equal((await s.getInfo()).network?.allowPublicTraffic, false);
    await serve(s, 8000, 'private-page');
    const host = s.getHost(8000);
    const none = await get(host);
    assert.equal(none.status, 401, `${s.sandboxId}: ${none.body}`);
    const wrong = await get(host, '/', { 'e2b-traffic-access-token': `${s.trafficAccessToken}x` });
    assert.equal(wrong.status, 401);
    const ok = await get(host, '/', { 'e2b-traffic-access-token': s.trafficAccessToken! });
    assert.equal(ok.status, 200, ok.body);
    assert.equal(ok.body, 'private-page\n');
    // The same secret is Capsule's port token: the native header takes it too, and the native view agrees.
    assert.equal((await get(host, '/', { 'x-capsule-port-token': s.trafficAccessToken! })).status, 200);
    const access = await api(d.url, 'GET', `/v1/sandboxes/${s.sandboxId}/network/ports/8000`);
    assert.equal(access.json.token, s.trafficAccessToken);
    assert.equal(access.json.public, false);
    // E2B's header name is E2B's host-routed form only; the path-routed form wants Capsule's.
    const pathRouted = await get(`127.0.0.1:${daemonPort}`, `/v1/sandboxes/${s.sandboxId}/ports/8000/`, { 'e2b-traffic-access-token': s.trafficAccessToken! });
    assert.equal(pathRouted.status, 401);
    // connect answers the same token.
    const again = await Sandbox.connect(s.sandboxId);
    assert.equal(again.trafficAccessToken, s.trafficAccessToken);
    // E2B's network update replaces egress rules only: the ports stay private.
    await s.updateNetwork({ allowOut: [] });
    assert.equal((await get(host)).status, 401, 'still private after a network update');
  });

  it('refuses the port options Capsule does not have (httpsPorts, maskRequestHost) instead of ignoring them', async () => {
    for (const network of [{ httpsPorts: [3000] }, { maskRequestHost: 'x-${PORT}.example.test' }]) {
      const e = await Sandbox.create('busybox', { allowInternetAccess: false, network }).then(
        (s) => {
          made.push(s);
          return assert.fail(`created ${s.sandboxId} with ${JSON.stringify(network)}`);
        },
        (x: unknown) => x as Error,
      );
      assert.match(String(e.message), /is not supported by Capsule/, String(e));
    }
  });

  it('native API: every port public (publicPorts: "all") at create and while running, and back to none', async () => {
    const c = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', network: { publicPorts: 'all' } });
    assert.equal(c.status, 201, c.text);
    const id = c.json.id as string;
    nativeIds.push(id);
    const run = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: 'mkdir -p /www && echo native > /www/index.html && httpd -p 8080 -h /www' });
    assert.equal(run.json.exitCode, 0, run.text);
    const host = `8080-${id}.localhost:${daemonPort}`;
    assert.equal((await get(host)).status, 200);
    assert.equal((await api(d.url, 'GET', `/v1/sandboxes/${id}/network/ports/8080`)).json.public, true);

    const closed = await api(d.url, 'PUT', `/v1/sandboxes/${id}/network`, { publicPorts: [] });
    assert.equal(closed.status, 200, closed.text);
    assert.deepEqual(closed.json.publicPorts, []);
    assert.equal((await get(host)).status, 401, 'no longer public');
    const token = (await api(d.url, 'GET', `/v1/sandboxes/${id}/network/ports/8080`)).json.token as string;
    assert.equal((await get(host, '/', { 'x-capsule-port-token': token })).status, 200);

    const open = await api(d.url, 'PUT', `/v1/sandboxes/${id}/network`, { publicPorts: 'all' });
    assert.equal(open.json.publicPorts, 'all');
    assert.equal((await get(`127.0.0.1:${daemonPort}`, `/v1/sandboxes/${id}/ports/8080/`)).status, 200, 'path-routed too');

    const bad = await api(d.url, 'PUT', `/v1/sandboxes/${id}/network`, { publicPorts: 'some' });
    assert.equal(bad.status, 400, bad.text);

    // The CLI says so, and sets it back.
    const env = { ...process.env, CAPSULE_URL: d.url, CAPSULE_API_KEY: d.adminKey ?? '' };
    const shown = spawnSync(process.execPath, [CLI, 'net', 'get', id], { env, encoding: 'utf8' });
    assert.match(shown.stdout, /public\s+all ports/);
    const set = spawnSync(process.execPath, [CLI, 'net', 'set', id, '--public-port', 'none'], { env, encoding: 'utf8' });
    assert.equal(set.status, 0, set.stderr);
    assert.equal((await get(host)).status, 401);
  });

  it("answers E2B's sandbox log routes (v2 and v1) from Capsule's sandbox log", async () => {
    const s = await create();
    await s.commands.run('echo e2b-log');
    await s.commands.run('exit 4').catch(() => undefined);
    await s.pause();
    await Sandbox.connect(s.sandboxId);
    const logs = async (p: string, k = key) => {
      const r = await fetch(`${d.url}/e2b${p}`, { headers: { 'x-api-key': k } });
      return { status: r.status, json: (await r.json()) as any };
    };
    type Entry = { timestamp: string; level: string; message: string; fields: Record<string, string> };
    const v2 = await logs(`/v2/sandboxes/${s.sandboxId}/logs`);
    assert.equal(v2.status, 200, JSON.stringify(v2.json));
    const entries = v2.json.logs as Entry[];
    assert.ok(entries.length >= 6, `${s.sandboxId}: ${JSON.stringify(entries)}`);
    for (const e of entries) {
      assert.ok(!Number.isNaN(Date.parse(e.timestamp)));
      assert.ok(['debug', 'info', 'warn', 'error'].includes(e.level));
      assert.equal(typeof e.fields.event, 'string');
    }
    const events = entries.map((e) => e.fields.event);
    assert.equal(events[0], 'state.creating');
    assert.ok(events.includes('state.paused') && events.lastIndexOf('state.running') > events.indexOf('state.paused'), events.join(','));
    assert.ok(entries.some((e) => e.fields.event === 'command.start' && e.message.includes('echo e2b-log')));
    assert.deepEqual(
      entries.filter((e) => e.fields.event === 'command.end').map((e) => e.fields.exitCode),
      ['0', '4'],
    );
    // E2B's filters: a minimum level, a substring, and newest first from a time.
    const infoUp = (await logs(`/v2/sandboxes/${s.sandboxId}/logs?level=info`)).json.logs as Entry[];
    assert.ok(infoUp.length < entries.length && infoUp.every((e) => e.level !== 'debug'));
    const search = (await logs(`/v2/sandboxes/${s.sandboxId}/logs?search=code%204`)).json.logs as Entry[];
    assert.deepEqual(search.map((e) => e.fields.exitCode), ['4']);
    const last = (await logs(`/v2/sandboxes/${s.sandboxId}/logs?direction=backward&limit=1&cursor=${Date.now() + 1000}`)).json.logs as Entry[];
    assert.deepEqual(last, [entries.at(-1)]);
    const none = (await logs(`/v2/sandboxes/${s.sandboxId}/logs?cursor=${Date.now() + 60_000}`)).json.logs as Entry[];
    assert.deepEqual(none, [], 'nothing from a time in the future on');
    assert.equal((await logs(`/v2/sandboxes/${s.sandboxId}/logs?direction=sideways`)).status, 400);
    // v1: lines and structured entries.
    const v1 = await logs(`/sandboxes/${s.sandboxId}/logs?limit=3`);
    assert.equal(v1.status, 200);
    assert.deepEqual(v1.json.logs, entries.slice(0, 3).map((e) => ({ timestamp: e.timestamp, line: e.message })));
    assert.deepEqual(v1.json.logEntries, entries.slice(0, 3));
    // Another tenant: 404.
    assert.equal((await logs(`/v2/sandboxes/${s.sandboxId}/logs`, e2bKey('e2b-net-other', 'someone-else'))).status, 404);
  });
});
