/** Sandbox lifecycle through the REST API: create, list, timeout, reaping, isolation, restart. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { api, removeDataDir, REPO_ROOT, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';
import { leftovers, settledLeftovers } from '../../helpers/leftovers.js';

let d: TestDaemon;

async function create(body: Record<string, unknown> = {}) {
  const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', ...body });
  assert.equal(r.status, 201, r.text);
  return r.json;
}
async function sh(id: string, cmd: string) {
  const r = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd });
  assert.equal(r.status, 200, r.text);
  return r.json;
}

describe('sandboxes', () => {
  before(async () => {
    d = await startTestDaemon();
  });
  after(async () => {
    // The restart tests hand the data dir to a second daemon, whose stop() leaves it: remove it here.
    const dir = d?.dataDir;
    await d?.stop();
    if (dir) await removeDataDir(dir);
  });

  it('creates, gets, lists by metadata and kills', async () => {
    const sb = await create({ metadata: { team: 'blue', run: '1' }, resources: { memoryMb: 256, cpus: 0.5, pids: 64 } });
    assert.match(sb.id, /^sbx-[a-z0-9]{12}$/);
    assert.equal(sb.state, 'running');
    assert.deepEqual(sb.resources, { cpus: 0.5, memoryMb: 256, pids: 64, diskMb: 2048 }, 'diskMb defaults to 2048');
    const other = await create({ metadata: { team: 'red' } });

    const got = await api(d.url, 'GET', `/v1/sandboxes/${sb.id}`);
    assert.equal(got.json.id, sb.id);
    const blue = await api(d.url, 'GET', '/v1/sandboxes?metadata.team=blue');
    assert.deepEqual(blue.json.sandboxes.map((s: any) => s.id), [sb.id]);

    const k = await api(d.url, 'DELETE', `/v1/sandboxes/${sb.id}`);
    assert.equal(k.status, 200);
    assert.equal(k.json.state, 'killed');
    assert.deepEqual(await settledLeftovers(sb.id, d.dataDir), []);
    const again = await api(d.url, 'DELETE', `/v1/sandboxes/${sb.id}`);
    assert.equal(again.json.state, 'killed', 'kill is idempotent');
    const cmd = await api(d.url, 'POST', `/v1/sandboxes/${sb.id}/commands`, { cmd: 'true' });
    assert.equal(cmd.status, 409);
    assert.equal(cmd.json.error.code, 'conflict');
    const live = await api(d.url, 'GET', '/v1/sandboxes');
    assert.ok(!live.json.sandboxes.some((s: any) => s.id === sb.id));
    const all = await api(d.url, 'GET', '/v1/sandboxes?state=killed');
    assert.ok(all.json.sandboxes.some((s: any) => s.id === sb.id));
    await api(d.url, 'DELETE', `/v1/sandboxes/${other.id}`);
  });

  it('applies resource limits in the sandbox cgroup', async () => {
    const sb = await create({ resources: { memoryMb: 200, cpus: 0.5, pids: 50 } });
    const mem = fs.readFileSync(`/sys/fs/cgroup/memory/capsule/${sb.id}/memory.limit_in_bytes`, 'utf8').trim();
    assert.equal(Number(mem), 200 * 1024 * 1024);
    const pids = fs.readFileSync(`/sys/fs/cgroup/pids/capsule/${sb.id}/pids.max`, 'utf8').trim();
    assert.equal(pids, '50');
    const quota = fs.readFileSync(`/sys/fs/cgroup/cpu/capsule/${sb.id}/cpu.cfs_quota_us`, 'utf8').trim();
    assert.equal(Number(quota), 50_000);
    await api(d.url, 'DELETE', `/v1/sandboxes/${sb.id}`);
  });

  it('GET /v1/info names the runtime backend and its capabilities', async () => {
    const info = await api(d.url, 'GET', '/v1/info');
    assert.equal(info.status, 200, info.text);
    assert.equal(info.json.runtime.kind, 'crun');
    assert.match(info.json.runtime.name, /^crun \d/);
    const { reasons, ...capabilities } = info.json.runtime.capabilities;
    assert.match(reasons.memorySnapshot, /^hibernate needs the runc runtime with CRIU 4 .*CAPSULE_RUNTIME=runc/);
    assert.deepEqual(capabilities, {
      isolation: 'container',
      pause: true,
      stop: true,
      volumes: true,
      snapshot: true,
      memorySnapshot: false,
      updateResources: true,
      exportChanges: true,
      fileHandoff: true,
      network: ['none', 'gateway'], // gateway: the relay is built and nft installed (ADR 0012)
      maxLayers: 128,
    });
  });

  it('reports an OOM kill inside the sandbox cgroup, and the sandbox stays usable', async () => {
    const sb = await create({ resources: { memoryMb: 64 } });
    const r = await sh(sb.id, 'head -c 300000000 /dev/zero | tail -c 250000000 > /dev/null');
    assert.equal(r.exitCode, 137, JSON.stringify(r));
    assert.equal(r.oomKilled, true);
    const plainKill = await sh(sb.id, 'kill -9 $$');
    assert.equal(plainKill.exitCode, 137);
    assert.equal(plainKill.oomKilled, undefined, 'a SIGKILL that is not the OOM killer is not reported as one');
    assert.equal((await sh(sb.id, 'echo ok')).stdout, 'ok\n');
    await api(d.url, 'DELETE', `/v1/sandboxes/${sb.id}`);
  });

  it('marks a sandbox failed when its init (the agent) dies, instead of reporting it running', async () => {
    const sb = await create();
    const pid = Number(fs.readFileSync(`${d.dataDir}/sandboxes/${sb.id}/bundle/init.pid`, 'utf8'));
    assert.ok(pid > 1);
    process.kill(pid, 'SIGKILL');
    let state = 'running';
    for (let i = 0; i < 50 && state === 'running'; i++) {
      await new Promise((r) => setTimeout(r, 100));
      state = (await api(d.url, 'GET', `/v1/sandboxes/${sb.id}`)).json.state;
    }
    assert.equal(state, 'failed');
    const r = await api(d.url, 'POST', `/v1/sandboxes/${sb.id}/commands`, { cmd: 'true' });
    assert.equal(r.status, 409);
    let left = leftovers(sb.id, d.dataDir);
    for (let i = 0; i < 20 && left.length; i++) {
      await new Promise((r) => setTimeout(r, 100));
      left = leftovers(sb.id, d.dataDir);
    }
    assert.deepEqual(left, []);
  });

  it('reaps a sandbox when its timeout passes, leaving nothing behind', async () => {
    const sb = await create({ timeoutMs: 1500 });
    await sh(sb.id, 'sleep 1000 >/dev/null 2>&1 & echo started');
    const ext = await api(d.url, 'POST', `/v1/sandboxes/${sb.id}/timeout`, { timeoutMs: 2500 });
    assert.equal(ext.status, 200);
    assert.ok(Date.parse(ext.json.expiresAt) > Date.parse(sb.expiresAt));
    const deadline = Date.now() + 15_000;
    let state = 'running';
    while (Date.now() < deadline && state === 'running') {
      await new Promise((r) => setTimeout(r, 250));
      state = (await api(d.url, 'GET', `/v1/sandboxes/${sb.id}`)).json.state;
    }
    assert.equal(state, 'expired');
    // Ending is asynchronous; give the teardown a moment.
    let left = leftovers(sb.id, d.dataDir);
    for (let i = 0; i < 20 && left.length; i++) {
      await new Promise((r) => setTimeout(r, 100));
      left = leftovers(sb.id, d.dataDir);
    }
    assert.deepEqual(left, []);
    const ps = execFileSync('ps', ['-eo', 'args']).toString();
    assert.ok(!ps.split('\n').some((l) => l.trim() === 'sleep 1000'), 'the sandbox processes are gone');
  });

  it('keeps two sandboxes apart: processes, files, hostname, network', async () => {
    const a = await create();
    const b = await create();
    await sh(a.id, 'echo secret-a > /tmp/mine; sleep 1000 >/dev/null 2>&1 &');
    const bView = await sh(b.id, 'ls /tmp; ps -o pid,args 2>/dev/null || ps; hostname');
    assert.ok(!bView.stdout.includes('mine'), 'b cannot see a\'s file');
    assert.ok(!bView.stdout.includes('sleep 1000'), 'b cannot see a\'s processes');
    assert.ok(bView.stdout.includes(b.id), 'hostname is the sandbox id');
    const net = await sh(b.id, 'cat /proc/net/dev');
    const ifaces = net.stdout.split('\n').slice(2).filter(Boolean).map((l: string) => l.split(':')[0]!.trim());
    assert.deepEqual(ifaces, ['lo']);
    const who = await sh(a.id, 'id -u; cat /proc/self/uid_map');
    assert.match(who.stdout, /^0\n\s*0\s+100000\s+65536/);
    await api(d.url, 'DELETE', `/v1/sandboxes/${a.id}`);
    await api(d.url, 'DELETE', `/v1/sandboxes/${b.id}`);
  });

  it('survives a daemon SIGKILL: the sandbox is re-adopted and usable', async () => {
    const sb = await create({ timeoutMs: 120_000 });
    await sh(sb.id, 'echo kept > /tmp/state');
    const bg = await api(d.url, 'POST', `/v1/sandboxes/${sb.id}/commands`, { cmd: 'sleep 1; echo bg-done', background: true });
    const dataDir = d.dataDir;
    await d.kill();
    d = await startTestDaemon({ dataDir });
    const got = await api(d.url, 'GET', `/v1/sandboxes/${sb.id}`);
    assert.equal(got.json.state, 'running', d.log());
    const r = await sh(sb.id, 'cat /tmp/state');
    assert.equal(r.stdout, 'kept\n');
    const w = await api(d.url, 'GET', `/v1/sandboxes/${sb.id}/commands/${bg.json.pid}/wait?timeoutMs=10000`);
    assert.equal(w.status, 200, w.text);
    assert.equal(w.json.exitCode, 0);
    await api(d.url, 'DELETE', `/v1/sandboxes/${sb.id}`);
    assert.deepEqual(await settledLeftovers(sb.id, dataDir), []);
  });

  it('removes a half-made sandbox (disk and overlay mounted, no container) at the next start after a SIGKILL', async () => {
    await create(); // the busybox template exists
    const dataDir = d.dataDir;
    await d.kill();
    // What a create cut short between the mount helper and `crun run` leaves: the whole mount stack.
    const id = 'sbx-halfmade00001';
    execFileSync(path.join(REPO_ROOT, 'dist', 'native', 'capsule-mount'), [
      'setup',
      path.join(dataDir, 'sandboxes', id),
      path.join(dataDir, 'templates', 'busybox', 'rootfs'),
      '64',
      '100000',
      path.join(dataDir, 'bin', 'capsule-agent'),
    ]);
    assert.deepEqual(leftovers(id, dataDir).filter((l) => l === 'mount' || l.startsWith('loop')).length, 2, 'set up as a crash would leave it');
    d = await startTestDaemon({ dataDir });
    assert.deepEqual(await settledLeftovers(id, dataDir), [], d.log());
  });
});
