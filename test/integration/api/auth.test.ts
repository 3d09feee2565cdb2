/** API keys, tenancy and per-key limits against a real daemon. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { CLI, api, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';

const run = promisify(execFile);
let d: TestDaemon;

const as = (key: string | undefined) => (key ? { authorization: `Bearer ${key}` } : { authorization: '' });

async function makeKey(body: Record<string, unknown>): Promise<{ id: string; key: string }> {
  const r = await api(d.url, 'POST', '/v1/keys', body);
  assert.equal(r.status, 201, r.text);
  return r.json;
}

describe('authentication and tenancy', () => {
  before(async () => {
    d = await startTestDaemon();
  });
  after(async () => {
    await d?.stop();
  });

  it('requires a key everywhere but health and the API document', async () => {
    assert.equal((await api(d.url, 'GET', '/v1/health', undefined, as(undefined))).status, 200);
    assert.equal((await api(d.url, 'GET', '/v1/openapi.json', undefined, as(undefined))).status, 200);
    for (const [m, p] of [['GET', '/v1/sandboxes'], ['POST', '/v1/sandboxes'], ['GET', '/v1/templates'], ['GET', '/v1/keys']] as const) {
      const r = await api(d.url, m, p, m === 'POST' ? { template: 'busybox' } : undefined, as(undefined));
      assert.equal(r.status, 401, `${m} ${p}`);
      assert.equal(r.json.error.code, 'unauthenticated');
    }
    const wrong = await api(d.url, 'GET', '/v1/sandboxes', undefined, as('cap_not-a-real-key'));
    assert.equal(wrong.status, 401);
    const basic = await api(d.url, 'GET', '/v1/sandboxes', undefined, { authorization: 'Basic YTpi' });
    assert.equal(basic.status, 401);
  });

  it('keeps tenants apart: another owner\'s sandbox answers 404 like a missing one', async () => {
    const alice = await makeKey({ name: 'alice' });
    const bob = await makeKey({ name: 'bob' });
    const sb = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' }, as(alice.key));
    assert.equal(sb.status, 201, sb.text);
    const id = sb.json.id;
    await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: 'echo private > /tmp/p' }, as(alice.key));

    const missing = await api(d.url, 'GET', '/v1/sandboxes/sbx-000000000000', undefined, as(bob.key));
    const probes: Array<[string, string, unknown?]> = [
      ['GET', `/v1/sandboxes/${id}`],
      ['DELETE', `/v1/sandboxes/${id}`],
      ['POST', `/v1/sandboxes/${id}/timeout`, { timeoutMs: 60_000 }],
      ['POST', `/v1/sandboxes/${id}/commands`, { cmd: 'cat /tmp/p' }],
      ['GET', `/v1/sandboxes/${id}/commands`],
      ['GET', `/v1/sandboxes/${id}/files?path=/tmp/p`],
      ['GET', `/v1/sandboxes/${id}/files/list?path=/tmp`],
      ['POST', `/v1/sandboxes/${id}/files/mkdir`, { path: '/x' }],
    ];
    for (const [m, p, body] of probes) {
      const r = await api(d.url, m, p, body, as(bob.key));
      assert.equal(r.status, 404, `${m} ${p}: ${r.text}`);
      assert.equal(r.json.error.code, missing.json.error.code);
    }
    const bobList = await api(d.url, 'GET', '/v1/sandboxes', undefined, as(bob.key));
    assert.deepEqual(bobList.json.sandboxes, []);
    const aliceList = await api(d.url, 'GET', '/v1/sandboxes', undefined, as(alice.key));
    assert.deepEqual(aliceList.json.sandboxes.map((s: any) => s.id), [id]);
    const adminView = await api(d.url, 'GET', `/v1/sandboxes/${id}`);
    assert.equal(adminView.status, 200, 'admins see every sandbox');
    const still = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: 'cat /tmp/p' }, as(alice.key));
    assert.equal(still.json.stdout, 'private\n');
    await api(d.url, 'DELETE', `/v1/sandboxes/${id}`, undefined, as(alice.key));
  });

  it('revokes a key at once, and keys of one owner share sandboxes', async () => {
    const k1 = await makeKey({ name: 'ci-1', owner: 'team-ci' });
    const k2 = await makeKey({ name: 'ci-2', owner: 'team-ci' });
    const sb = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' }, as(k1.key));
    assert.equal((await api(d.url, 'GET', `/v1/sandboxes/${sb.json.id}`, undefined, as(k2.key))).status, 200);
    const rev = await api(d.url, 'DELETE', `/v1/keys/${k1.id}`);
    assert.equal(rev.status, 200);
    assert.ok(rev.json.revokedAt);
    const after = await api(d.url, 'GET', `/v1/sandboxes/${sb.json.id}`, undefined, as(k1.key));
    assert.equal(after.status, 401);
    await api(d.url, 'DELETE', `/v1/sandboxes/${sb.json.id}`, undefined, as(k2.key));
  });

  it('only admins manage keys', async () => {
    const user = await makeKey({ name: 'plain' });
    const r = await api(d.url, 'POST', '/v1/keys', { name: 'sneaky', admin: true }, as(user.key));
    assert.equal(r.status, 403);
    assert.equal(r.json.error.code, 'permission_denied');
    assert.equal((await api(d.url, 'GET', '/v1/keys', undefined, as(user.key))).status, 403);
    const list = await api(d.url, 'GET', '/v1/keys');
    assert.ok(list.json.keys.every((k: any) => k.key === undefined), 'secrets are never listed');
  });

  it('enforces per-key quotas and request rates with 429', async () => {
    const small = await makeKey({ name: 'small', limits: { maxSandboxes: 1, maxMemoryMb: 300, ratePerMinute: null } });
    const big = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', resources: { memoryMb: 512 } }, as(small.key));
    assert.equal(big.status, 429, big.text);
    assert.match(big.json.error.message, /MiB/);
    const one = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', resources: { memoryMb: 128 } }, as(small.key));
    assert.equal(one.status, 201, one.text);
    const two = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', resources: { memoryMb: 64 } }, as(small.key));
    assert.equal(two.status, 429);
    assert.equal(two.json.error.code, 'rate_limited');
    await api(d.url, 'DELETE', `/v1/sandboxes/${one.json.id}`, undefined, as(small.key));
    const again = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', resources: { memoryMb: 64 } }, as(small.key));
    assert.equal(again.status, 201, 'the quota frees up when a sandbox ends');
    await api(d.url, 'DELETE', `/v1/sandboxes/${again.json.id}`, undefined, as(small.key));

    const slow = await makeKey({ name: 'slow', limits: { ratePerMinute: 5 } });
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) statuses.push((await api(d.url, 'GET', '/v1/sandboxes', undefined, as(slow.key))).status);
    assert.deepEqual(statuses.slice(0, 5), [200, 200, 200, 200, 200]);
    assert.ok(statuses.slice(5).every((s) => s === 429), statuses.join(','));
  });

  it('stores only hashes of keys', async () => {
    const k = await makeKey({ name: 'hashed' });
    const db = new Database(path.join(d.dataDir, 'capsule.db'), { readonly: true });
    const rows = db.prepare('SELECT * FROM api_keys').all();
    db.close();
    assert.ok(!JSON.stringify(rows).includes(k.key));
    assert.equal(fs.statSync(path.join(d.dataDir, 'admin.key')).mode & 0o777, 0o600);
  });

  it('manages keys from the CLI', async () => {
    const env = { ...process.env, CAPSULE_URL: d.url };
    const made = await run(process.execPath, [CLI, 'keys', 'create', '--name', 'from-cli', '--max-sandboxes', '3', '--json'], { env });
    const k = JSON.parse(made.stdout);
    assert.match(k.key, /^cap_/);
    assert.equal(k.limits.maxSandboxes, 3);
    const listed = JSON.parse((await run(process.execPath, [CLI, 'keys', 'list', '--json'], { env })).stdout);
    assert.ok(listed.some((x: any) => x.id === k.id));
    await run(process.execPath, [CLI, 'keys', 'revoke', k.id], { env });
    const denied = await run(process.execPath, [CLI, 'list', '--api-key', k.key], { env }).catch((e) => e);
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /unauthenticated/);
  });
});

describe('--no-auth', () => {
  let open: TestDaemon;
  before(async () => {
    open = await startTestDaemon({ args: ['--no-auth'] });
  });
  after(async () => {
    await open?.stop();
  });
  it('answers without a key, after a loud warning', async () => {
    assert.match(open.log(), /WARNING: --no-auth/);
    const r = await api(open.url, 'GET', '/v1/sandboxes', undefined, as(undefined));
    assert.equal(r.status, 200);
    assert.equal(open.adminKey, undefined);
  });
});
