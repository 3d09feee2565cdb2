/**
 * The networking views over one service: the CLI (`create --allow`, `net get|set|log`, `port`), the SDK
 * (`network.follow`, `getHost`, `setNetwork`) and REST's 4xx for bad input, against a real daemon whose
 * "internet" is a loopback HTTP server (test/helpers/internet.ts).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { api, CLI, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';
import { startInternet, type Internet } from '../../helpers/internet.js';
import { Sandbox, type NetworkLogEntry } from '../../../src/sdk/index.js';

let d: TestDaemon;
let web: Internet;

function capsule(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CAPSULE_URL: d.url } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b));
    child.stderr.on('data', (b: Buffer) => (stderr += b));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('network views: CLI, SDK, REST', { timeout: 180_000 }, () => {
  before(async () => {
    web = await startInternet(['allowed.test', 'other.test']);
    d = await startTestDaemon({ env: { CAPSULE_NET_TEST_INTERNET: web.env } });
  });
  after(async () => {
    await d?.stop();
    await web?.close();
  });

  it('CLI: create with --allow, read the policy, see the ledger, change it, get a port URL', async () => {
    const site = web.sites['allowed.test']!;
    const c = await capsule(['create', '--template', 'busybox', '--allow', 'allowed.test']);
    assert.equal(c.code, 0, c.stderr);
    const id = c.stdout.trim();
    const get = await capsule(['net', 'get', id, '--json']);
    assert.deepEqual(JSON.parse(get.stdout).egress, { allow: ['allowed.test'] });
    const fetch = await capsule(['exec', id, '--', 'sh', '-c', `ip=$(nslookup allowed.test | awk '/^Address/ {a=$2} END {print a}'); printf 'GET / HTTP/1.0\\r\\nHost: allowed.test\\r\\n\\r\\n' | nc $ip ${site.httpPort}`]);
    assert.match(fetch.stdout, /hello from allowed\.test over http/, fetch.stderr);
    await capsule(['exec', id, '--', 'nslookup', 'other.test']);
    let lines: NetworkLogEntry[] = [];
    for (let i = 0; i < 50 && !lines.some((e) => e.protocol === 'tcp' && e.state === 'closed'); i++) {
      const log = await capsule(['net', 'log', id, '--json']);
      assert.equal(log.code, 0, log.stderr);
      lines = log.stdout.trim().split('\n').map((l) => JSON.parse(l) as NetworkLogEntry);
    }
    assert.ok(lines.some((e) => e.protocol === 'tcp' && e.verdict === 'allowed' && e.name === 'allowed.test' && e.bytesDown > 0));
    assert.ok(lines.some((e) => e.protocol === 'dns' && e.verdict === 'refused' && e.name === 'other.test'));
    const text = await capsule(['net', 'log', id]);
    assert.match(text.stdout, /ALLOW allowed\.test 203\.0\.113\.10:\d+ nc\[\d+\]/);
    assert.match(text.stdout, /DENY  dns other\.test/);

    const set = await capsule(['net', 'set', id, '--egress', 'none', '--public-port', '8000']);
    assert.equal(set.code, 0, set.stderr);
    assert.match(set.stdout, /egress\s+none/);
    assert.match(set.stdout, /public\s+8000/);
    const bad = await capsule(['net', 'set', id, '--allow', 'not a rule']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /invalid_argument: .*not a rule/);
    const usage = await capsule(['net', 'set', id, '--egress', 'some']);
    assert.equal(usage.code, 2, usage.stderr);

    const port = await capsule(['port', id, '8000', '--json']);
    const a = JSON.parse(port.stdout);
    assert.equal(a.url, `http://8000-${id}.localhost:${new URL(d.url).port}/`);
    assert.equal(a.public, true);
    assert.match(a.signedUrl, /\?capsule_token=\d+\.[A-Za-z0-9_-]{32}$/);
    await capsule(['kill', id]);
  });

  it('SDK: create with a policy, follow the ledger, change it live, getHost', async () => {
    const site = web.sites['allowed.test']!;
    const conn = { apiUrl: d.url, ...(d.adminKey ? { apiKey: d.adminKey } : {}) };
    const sbx = await Sandbox.create({ ...conn, template: 'busybox', network: { egress: { allow: ['allowed.test'] } } });
    try {
      assert.equal(sbx.getHost(3000), `http://3000-${sbx.id}.localhost:${new URL(d.url).port}/`);
      const ac = new AbortController();
      const seen: NetworkLogEntry[] = [];
      const following = (async () => {
        for await (const e of sbx.network.follow({ signal: ac.signal })) {
          seen.push(e);
          if (e.protocol === 'tcp' && e.state === 'closed') ac.abort();
        }
      })();
      const ip = (await sbx.commands.run("nslookup allowed.test | awk '/^Address/ {a=$2} END {print a}'")).stdout.trim();
      await sbx.commands.run(`printf 'GET / HTTP/1.0\\r\\nHost: allowed.test\\r\\n\\r\\n' | nc ${ip} ${site.httpPort}`);
      await following;
      assert.ok(seen.some((e) => e.protocol === 'dns' && e.verdict === 'allowed'));
      assert.ok(seen.some((e) => e.protocol === 'tcp' && e.state === 'closed' && e.bytesUp > 0));
      const n = await sbx.setNetwork({ egress: 'none' });
      assert.equal(n.egress, 'none');
      const r = await sbx.commands.run(`printf 'GET / HTTP/1.0\\r\\nHost: allowed.test\\r\\n\\r\\n' | nc ${ip} ${site.httpPort}; echo rc=$?`);
      assert.doesNotMatch(r.stdout, /hello/);
    } finally {
      await sbx.kill();
    }
  });

  it('a sandbox made with none gets its gateway on first need: a port request, then a policy', async () => {
    const site = web.sites['allowed.test']!;
    const sb = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    const id = sb.json.id as string;
    const sh = async (cmd: string) => (await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd })).json as { stdout: string; stderr: string };
    assert.equal((await api(d.url, 'GET', `/v1/sandboxes/${id}/network`)).json.gateway, false);
    await sh('mkdir -p /www && echo inside > /www/index.html && httpd -p 8000 -h /www');
    const a = (await api(d.url, 'GET', `/v1/sandboxes/${id}/network/ports/8000`)).json;
    const r = await fetch(`${d.url}/v1/sandboxes/${id}/ports/8000/`, { headers: { 'x-capsule-port-token': a.token } });
    assert.equal(r.status, 200);
    assert.equal(await r.text(), 'inside\n');
    // Plumbed for the port, but its egress is still none: lookups fail at once, attempts are refused (and now logged).
    assert.equal((await api(d.url, 'GET', `/v1/sandboxes/${id}/network`)).json.gateway, true);
    const t0 = Date.now();
    const lookup = (await sh('nslookup allowed.test 2>&1')).stdout;
    assert.match(lookup, /NXDOMAIN/);
    assert.doesNotMatch(lookup, /Name:\s*allowed\.test/);
    assert.ok(Date.now() - t0 < 2000, `the lookup was refused at once (${Date.now() - t0} ms), not left to time out`);
    assert.doesNotMatch((await sh(`printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc ${site.address} ${site.httpPort}`)).stdout, /hello/);
    const set = await api(d.url, 'PUT', `/v1/sandboxes/${id}/network`, { egress: { allow: ['allowed.test'] } });
    assert.equal(set.status, 200, set.text);
    assert.equal(set.json.gateway, true);
    const got = await sh(`ip=$(nslookup allowed.test | awk '/^Address/ {a=$2} END {print a}'); printf 'GET / HTTP/1.0\\r\\nHost: allowed.test\\r\\n\\r\\n' | nc $ip ${site.httpPort}`);
    assert.match(got.stdout, /hello from allowed\.test/, got.stderr);
    await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
  });

  it('a pooled sandbox claimed with a policy gets its gateway at the claim', async () => {
    const pd = await startTestDaemon({ env: { CAPSULE_NET_TEST_INTERNET: web.env, CAPSULE_POOL: 'busybox=1' } });
    try {
      for (let i = 0; i < 100 && !(await api(pd.url, 'GET', '/v1/info')).json.pools?.some((p: { ready: number }) => p.ready > 0); i++) await new Promise((r) => setTimeout(r, 50));
      const sb = await api(pd.url, 'POST', '/v1/sandboxes', { template: 'busybox', network: { egress: { allow: ['allowed.test'] } } });
      assert.equal(sb.status, 201, sb.text);
      const info = (await api(pd.url, 'GET', '/v1/info')).json;
      assert.ok(info.pools.some((p: { claims: number }) => p.claims >= 1), JSON.stringify(info.pools));
      const r = await api(pd.url, 'POST', `/v1/sandboxes/${sb.json.id}/commands`, { cmd: 'nslookup allowed.test' });
      assert.match(r.json.stdout, /Address:\s*198\.1[89]\./, r.text);
    } finally {
      await pd.stop();
    }
  });

  it('REST: bad policies and ports are 4xx, never 5xx; another owner sees nothing', async () => {
    for (const network of [{ egress: 'some' }, { egress: { allow: ['a b'] } }, { egress: { deny: ['x.test'] } }, { publicPorts: [0] }, { egress: { allow: ['x.test:99999'] } }, { other: 1 }]) {
      const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', network });
      assert.equal(r.status, 400, `${JSON.stringify(network)}: ${r.text}`);
      assert.equal(r.json.error.code, 'invalid_argument');
    }
    const sb = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    const id = sb.json.id as string;
    for (const [m, p, b] of [
      ['GET', `/v1/sandboxes/${id}/network/log?since=-1`, undefined],
      ['GET', `/v1/sandboxes/${id}/network/log?waitMs=99999999`, undefined],
      ['GET', `/v1/sandboxes/${id}/network/ports/0`, undefined],
      ['GET', `/v1/sandboxes/${id}/network/ports/70000`, undefined],
      ['PUT', `/v1/sandboxes/${id}/network`, { egress: { allow: [] , nope: 1 } }],
    ] as const) {
      const r = await api(d.url, m, p, b);
      assert.equal(r.status, 400, `${m} ${p}: ${r.text}`);
    }
    assert.equal((await api(d.url, 'GET', '/v1/sandboxes/sbx-000000000000/network')).status, 404);
    assert.equal((await api(d.url, 'GET', `/v1/sandboxes/${id}/ports/99999/`)).status, 400, 'a port out of range');
    assert.equal((await api(d.url, 'GET', `/v1/sandboxes/${id}/ports/0`)).status, 400);
    assert.equal((await api(d.url, 'GET', '/v1/sandboxes/sbx-000000000000/ports/80/')).status, 401, 'an unknown sandbox looks like a missing token');
    const key = await api(d.url, 'POST', '/v1/keys', { name: 'other', owner: 'other' });
    assert.equal(key.status, 201, key.text);
    const asOther = { authorization: `Bearer ${key.json.key}` };
    for (const p of [`/v1/sandboxes/${id}/network`, `/v1/sandboxes/${id}/network/log`, `/v1/sandboxes/${id}/network/ports/80`]) {
      assert.equal((await api(d.url, 'GET', p, undefined, asOther)).status, 404, p);
    }
    assert.equal((await api(d.url, 'PUT', `/v1/sandboxes/${id}/network`, { egress: 'all' }, asOther)).status, 404);
    const killed = await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
    assert.equal(killed.status, 200);
    const late = await api(d.url, 'PUT', `/v1/sandboxes/${id}/network`, { egress: 'all' });
    assert.equal(late.status, 409, late.text);
  });
});
