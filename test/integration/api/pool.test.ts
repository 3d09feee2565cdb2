/**
 * Warm pools against a real daemon and real crun: claims come from the pool
 * (the id existed as a container before the create), a claimed sandbox gets
 * the caller's owner, envs, metadata, timeout and limits and shows nothing of
 * its time in the pool, pooled containers are invisible to lists and quotas,
 * unfit requests go cold, and no pooled container outlives the daemon.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { api, startTestDaemon, tempDataDir, removeDataDir, type TestDaemon } from '../../helpers/daemon.js';

/** Container ids crun knows in this daemon's runtime state. */
function containers(dataDir: string): string[] {
  if (!fs.existsSync(`${dataDir}/runtime`)) return [];
  return execFileSync('crun', ['--root', `${dataDir}/runtime`, 'list', '--quiet'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
}

function cgroupValue(controller: string, id: string, file: string): string {
  return fs.readFileSync(`/sys/fs/cgroup/${controller}/capsule/${id}/${file}`, 'utf8').trim();
}

async function pools(d: TestDaemon): Promise<any[]> {
  const r = await api(d.url, 'GET', '/v1/info');
  assert.equal(r.status, 200, r.text);
  return r.json.pools;
}

async function poolOf(d: TestDaemon, template = 'busybox'): Promise<any> {
  return (await pools(d)).find((p) => p.template === template);
}

/** Wait until the pool holds `n` ready sandboxes and is not starting another. */
async function filled(d: TestDaemon, n: number, template = 'busybox', ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const p = await poolOf(d, template);
    if (p && p.ready >= n && !p.starting) return;
    if (Date.now() > end) throw new Error(`pool did not fill to ${n}: ${JSON.stringify(p)}\n${d.log().slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function create(d: TestDaemon, body: Record<string, unknown> = {}, headers: Record<string, string> = {}) {
  const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', ...body }, headers);
  assert.equal(r.status, 201, r.text);
  return r.json;
}

async function sh(d: TestDaemon, id: string, cmd: string, headers: Record<string, string> = {}) {
  const r = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd }, headers);
  assert.equal(r.status, 200, r.text);
  return r.json;
}

describe('warm pool', () => {
  let d: TestDaemon;
  before(async () => {
    d = await startTestDaemon({ args: ['--pool', 'busybox=2'] });
  });
  after(async () => {
    await d?.stop();
  });

  it('reports its state in GET /v1/info and the OpenAPI document', async () => {
    await filled(d, 2);
    const p = await poolOf(d);
    assert.equal(p.size, 2);
    assert.equal(p.startFailures, 0);
    assert.equal((await pools(d)).length, 1, 'flags replace the default pool');
    const doc = await api(d.url, 'GET', '/v1/openapi.json');
    assert.ok(doc.json.paths['/v1/info'].get);
  });

  it('claims come from the pool: the id was already a running container, ids never repeat', async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) {
      await filled(d, 2);
      const before = containers(d.dataDir);
      const claimsBefore = (await poolOf(d)).claims;
      const sb = await create(d);
      assert.ok(before.includes(sb.id), 'the sandbox is a container the pool had started');
      assert.equal((await poolOf(d)).claims, claimsBefore + 1);
      assert.ok(!seen.has(sb.id));
      seen.add(sb.id);
      assert.equal((await sh(d, sb.id, 'echo hi')).stdout, 'hi\n');
      await api(d.url, 'DELETE', `/v1/sandboxes/${sb.id}`);
    }
    await filled(d, 2);
    for (const id of containers(d.dataDir)) assert.ok(!seen.has(id), 'a killed sandbox never returns to the pool');
  });

  it('applies envs, metadata, timeout and limits at claim, and nothing of the pool shows', async () => {
    await filled(d, 2);
    const t0 = Date.now();
    const sb = await create(d, {
      envs: { GREETING: 'hello' },
      metadata: { job: 'pool-test' },
      timeoutMs: 60_000,
      resources: { cpus: 0.5, pids: 64 },
    });
    assert.equal((await poolOf(d)).claims > 0, true);
    assert.deepEqual(sb.metadata, { job: 'pool-test' });
    assert.deepEqual(sb.resources, { cpus: 0.5, memoryMb: 512, pids: 64, diskMb: 2048 });
    const expires = Date.parse(sb.expiresAt);
    assert.ok(expires >= t0 + 60_000 && expires <= Date.now() + 60_000, 'the clock starts at the claim');
    assert.ok(Date.parse(sb.createdAt) >= t0 - 5, 'createdAt is the claim, not the pool start');
    // Freshly started: no command is known, and the first one gets pid 2 (the agent is 1), as in a cold sandbox.
    const none = await api(d.url, 'GET', `/v1/sandboxes/${sb.id}/commands`);
    assert.deepEqual(none.json.processes, []);
    const first = await sh(d, sb.id, 'echo $$ $GREETING; hostname');
    assert.equal(first.pid, 2, 'nothing ran in it before the claim');
    assert.equal(first.stdout, `2 hello\n${sb.id}\n`);
    // Limits, read from the host: cpu quota for 0.5 cores, pids.max 64, memory unchanged.
    assert.equal(cgroupValue('cpu', sb.id, 'cpu.cfs_quota_us'), '50000');
    assert.equal(cgroupValue('pids', sb.id, 'pids.max'), '64');
    assert.equal(cgroupValue('memory', sb.id, 'memory.limit_in_bytes'), String(512 * 1024 * 1024));
    await api(d.url, 'DELETE', `/v1/sandboxes/${sb.id}`);
  });

  it('pooled sandboxes are never listed nor counted in quotas', async () => {
    await filled(d, 2);
    const all = await api(d.url, 'GET', '/v1/sandboxes?state=all');
    const pooled = containers(d.dataDir);
    assert.equal(pooled.length, 2);
    for (const id of pooled) {
      assert.ok(!all.json.sandboxes.some((s: any) => s.id === id), 'pooled ids are not in any list');
      assert.equal((await api(d.url, 'GET', `/v1/sandboxes/${id}`)).status, 404, 'nor reachable by id');
    }
    const key = await api(d.url, 'POST', '/v1/keys', { name: 'quota1', limits: { maxSandboxes: 1, maxMemoryMb: 600 } });
    assert.equal(key.status, 201, key.text);
    const h = { authorization: `Bearer ${key.json.key}` };
    const mine = await create(d, {}, h);
    assert.equal((await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' }, h)).status, 429, 'the quota counts only claimed ones');
    const listed = await api(d.url, 'GET', '/v1/sandboxes', undefined, h);
    assert.deepEqual(listed.json.sandboxes.map((s: any) => s.id), [mine.id]);
    const got = await api(d.url, 'GET', `/v1/sandboxes/${mine.id}`, undefined, h);
    assert.equal(got.status, 200, 'the claimed sandbox belongs to the caller');
    await api(d.url, 'DELETE', `/v1/sandboxes/${mine.id}`, undefined, h);
  });

  it('a refused create (quota) does not spend a pooled sandbox', async () => {
    await filled(d, 2);
    const key = await api(d.url, 'POST', '/v1/keys', { name: 'quota0', limits: { maxSandboxes: 0 } });
    const before = containers(d.dataDir);
    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' }, { authorization: `Bearer ${key.json.key}` });
    assert.equal(r.status, 429);
    assert.deepEqual(containers(d.dataDir), before);
  });

  it('limits a started sandbox cannot take give a cold sandbox sized like any fresh one', async () => {
    await filled(d, 2);
    const before = containers(d.dataDir);
    const misses = (await poolOf(d)).misses;
    const sb = await create(d, { resources: { memoryMb: 256 } });
    assert.ok(!before.includes(sb.id), 'a new container, not a pooled one');
    assert.equal((await poolOf(d)).misses, misses + 1);
    assert.equal(cgroupValue('memory', sb.id, 'memory.limit_in_bytes'), String(256 * 1024 * 1024));
    // /dev is sized from the memory limit at start: 1/16 of 256 MiB (a 512 MiB pooled one has 32768).
    const df = await sh(d, sb.id, 'df -k /dev | tail -1');
    assert.match(df.stdout, /\s16384\s/);
    for (const id of before) assert.ok(containers(d.dataDir).includes(id), 'the pooled ones stay for the next fitting request');
    await api(d.url, 'DELETE', `/v1/sandboxes/${sb.id}`);
  });

  it('a pooled sandbox that died is replaced, and creates keep working', async () => {
    await filled(d, 2);
    const [victim] = containers(d.dataDir);
    const state = JSON.parse(execFileSync('crun', ['--root', `${d.dataDir}/runtime`, 'state', victim!], { encoding: 'utf8' }));
    process.kill(state.pid, 'SIGKILL');
    const sb = await create(d);
    assert.notEqual(sb.id, victim);
    assert.equal((await sh(d, sb.id, 'echo ok')).stdout, 'ok\n');
    await api(d.url, 'DELETE', `/v1/sandboxes/${sb.id}`);
    await filled(d, 2);
    const p = await poolOf(d);
    assert.equal(p.lost + p.fallbacks >= 1, true, JSON.stringify(p));
    assert.ok(!containers(d.dataDir).includes(victim!), 'the dead one was removed');
  });

  it('a burst of creates is served by the pool, then it refills to its size', async () => {
    await filled(d, 2);
    const claims = (await poolOf(d)).claims;
    const sbs = await Promise.all(Array.from({ length: 4 }, () => create(d)));
    assert.equal(new Set(sbs.map((s) => s.id)).size, 4);
    assert.ok((await poolOf(d)).claims >= claims + 2);
    await Promise.all(sbs.map((s) => api(d.url, 'DELETE', `/v1/sandboxes/${s.id}`)));
    await filled(d, 2);
  });
});

describe('warm pool lifecycle', () => {
  it('size 0 is off: nothing is started and creates are cold', async () => {
    const d = await startTestDaemon({ args: ['--pool', 'busybox=0'] });
    try {
      assert.deepEqual(await pools(d), []);
      const sb = await create(d);
      assert.deepEqual(containers(d.dataDir), [sb.id]);
    } finally {
      await d.stop();
    }
  });

  it('CAPSULE_POOL configures pools too', async () => {
    const d = await startTestDaemon({ env: { CAPSULE_POOL: 'busybox=1' } });
    try {
      await filled(d, 1);
      assert.equal((await poolOf(d)).size, 1);
    } finally {
      await d.stop();
    }
  });

  it('a daemon restart removes pooled containers (they are not in the store); claimed ones are re-adopted', async () => {
    const dataDir = tempDataDir();
    try {
      let d = await startTestDaemon({ dataDir, args: ['--pool', 'busybox=2'] });
      await filled(d, 2);
      const claimed = await create(d);
      await filled(d, 2);
      const pooled = containers(dataDir).filter((id) => id !== claimed.id);
      assert.equal(pooled.length, 2);
      await d.kill(); // SIGKILL: no graceful close, the pooled containers stay behind
      assert.deepEqual(containers(dataDir).sort(), [...pooled, claimed.id].sort());

      d = await startTestDaemon({ dataDir, args: ['--pool', 'busybox=0'] });
      try {
        assert.deepEqual(containers(dataDir), [claimed.id], 'orphans removed by recover(), the claimed one adopted');
        for (const id of pooled) assert.ok(!fs.existsSync(`${dataDir}/sandboxes/${id}`));
        assert.equal((await sh(d, claimed.id, 'echo back')).stdout, 'back\n');
      } finally {
        await d.stop();
      }
    } finally {
      await removeDataDir(dataDir);
    }
  });

  it('a graceful stop destroys the pool and leaves no containers', async () => {
    const dataDir = tempDataDir();
    try {
      const d = await startTestDaemon({ dataDir, args: ['--pool', 'busybox=3'] });
      await filled(d, 3);
      const pooled = containers(dataDir);
      await d.stop(); // kills listed sandboxes (none), then SIGTERM
      assert.deepEqual(containers(dataDir), []);
      for (const id of pooled) {
        assert.ok(!fs.existsSync(`${dataDir}/sandboxes/${id}`), 'writable layer removed');
        assert.ok(!fs.existsSync(`/sys/fs/cgroup/memory/capsule/${id}`), 'cgroup removed');
      }
    } finally {
      await removeDataDir(dataDir);
    }
  });
});
