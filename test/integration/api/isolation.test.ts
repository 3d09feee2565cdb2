/**
 * Isolation chosen per sandbox (issue 16): container and gVisor sandboxes side
 * by side under one daemon, through REST, the SDK, the CLI and MCP; the
 * backends GET /v1/info reports; what a missing isolation answers; re-adoption
 * of both kinds after a daemon SIGKILL; and the daemon's default as a setting.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { promisify } from 'node:util';
import { api, CLI, removeDataDir, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';
import { settledLeftovers } from '../../helpers/leftovers.js';
import { microvmSkip } from '../../helpers/microvm.js';
import { connectClient } from '../mcp/fixture.js';
import { getDaemonInfo, Sandbox } from '../../../src/sdk/index.js';

const run = promisify(execFile);

function gvisorSkip(): string | false {
  if (process.getuid?.() !== 0) return 'needs root';
  try {
    execFileSync('runsc', ['--version'], { stdio: 'ignore' });
    return false;
  } catch {
    return 'needs runsc (apt-get install runsc)';
  }
}

let d: TestDaemon;

async function create(body: Record<string, unknown> = {}) {
  const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', ...body });
  assert.equal(r.status, 201, r.text);
  return r.json;
}
async function sh(id: string, cmd: string) {
  const r = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd });
  assert.equal(r.status, 200, r.text);
  return r.json as { exitCode: number; stdout: string; stderr: string };
}

/** Why this daemon (no CAPSULE_MICROVM_ALLOW_TCG) serves no microVMs: no QEMU, no kernel, or no hardware virtualization. */
const MICROVM_ABSENT = /(QEMU is not installed|no guest kernel|no hardware virtualization)/;

describe('isolation per sandbox', { skip: gvisorSkip() }, () => {
  before(async () => {
    d = await startTestDaemon();
  });
  after(async () => {
    // The restart test hands the data dir to a second daemon, whose stop() leaves it.
    const dir = d?.dataDir;
    await d?.stop();
    if (dir) await removeDataDir(dir);
  });

  it('GET /v1/info lists every isolation kind, with availability and the reason when absent', async () => {
    const r = await api(d.url, 'GET', '/v1/info');
    assert.equal(r.status, 200, r.text);
    const by = Object.fromEntries((r.json.backends as Array<{ isolation: string }>).map((b) => [b.isolation, b])) as Record<string, any>;
    assert.deepEqual(Object.keys(by).sort(), ['container', 'gvisor', 'microvm']);
    assert.equal(by.container.available, true);
    assert.equal(by.container.default, true);
    assert.equal(by.container.kind, 'crun');
    assert.equal(by.gvisor.available, true);
    assert.equal(by.gvisor.default, false);
    assert.equal(by.gvisor.kind, 'runsc');
    assert.match(by.gvisor.name, /^runsc /);
    assert.equal(by.gvisor.capabilities.pause, false);
    assert.equal(by.microvm.available, false);
    assert.match(by.microvm.reason, MICROVM_ABSENT);
    assert.equal(r.json.runtime.kind, 'crun', 'runtime stays the default backend');
  });

  it('runs a gVisor and a container sandbox side by side: commands, files, info', async () => {
    const gv = await create({ isolation: 'gvisor', metadata: { kind: 'gv' } });
    const ct = await create({ metadata: { kind: 'ct' } });
    assert.equal(gv.isolation, 'gvisor');
    assert.equal(ct.isolation, 'container');
    assert.equal((await api(d.url, 'GET', `/v1/sandboxes/${gv.id}`)).json.isolation, 'gvisor');
    // gVisor answers uname with its own kernel; the container sees the host's.
    const [g, c] = await Promise.all([sh(gv.id, 'uname -r; dmesg | head -1; id -u'), sh(ct.id, 'uname -r; id -u')]);
    const [gRel, gLog, gUid] = g.stdout.split('\n');
    assert.notEqual(gRel, os.release(), g.stdout);
    assert.match(gLog!, /gVisor/);
    assert.equal(gUid, '0');
    assert.equal(c.stdout, `${os.release()}\n0\n`);
    // Files go through the same agent API.
    const put = await api(d.url, 'PUT', `/v1/sandboxes/${gv.id}/files?path=/home/notes.txt`, 'in gvisor\n');
    assert.equal(put.status, 200, put.text);
    assert.equal((await api(d.url, 'GET', `/v1/sandboxes/${gv.id}/files?path=/home/notes.txt`)).text, 'in gvisor\n');
    assert.equal((await sh(gv.id, 'cat /home/notes.txt')).stdout, 'in gvisor\n');
    const list = await api(d.url, 'GET', '/v1/sandboxes');
    const kinds = Object.fromEntries((list.json.sandboxes as Array<{ id: string; isolation: string }>).map((s) => [s.id, s.isolation]));
    assert.equal(kinds[gv.id], 'gvisor');
    assert.equal(kinds[ct.id], 'container');
    for (const id of [gv.id, ct.id]) {
      assert.equal((await api(d.url, 'DELETE', `/v1/sandboxes/${id}`)).json.state, 'killed');
      assert.deepEqual(await settledLeftovers(id, d.dataDir), []);
    }
  });

  it("what gVisor cannot do answers 422 unsupported, and the sandbox runs on: pause, stop/start, such timeout policies, volumes, egress, ports", async () => {
    const unsupported = (r: { status: number; text: string; json: any }, re: RegExp) => {
      assert.equal(r.status, 422, r.text);
      assert.equal(r.json.error.code, 'unsupported', r.text);
      assert.match(r.json.error.message, re);
    };
    const info = await api(d.url, 'GET', '/v1/info');
    const gvCaps = (info.json.backends as Array<{ isolation: string; capabilities?: Record<string, unknown> }>).find((b) => b.isolation === 'gvisor')!.capabilities!;
    assert.deepEqual([gvCaps.pause, gvCaps.stop, gvCaps.volumes, gvCaps.network], [false, false, false, ['none']]);
    // Refused at create, before anything is started.
    for (const onTimeout of ['pause', 'stop']) {
      unsupported(await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', isolation: 'gvisor', lifecycle: { onTimeout } }), new RegExp(`runsc backend does not support ${onTimeout}`));
    }
    unsupported(await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', isolation: 'gvisor', network: { egress: 'all' } }), /runsc backend cannot give sandboxes egress/);
    unsupported(await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', isolation: 'gvisor', network: { publicPorts: [8080] } }), /runsc backend cannot expose sandbox ports/);
    const vol = await api(d.url, 'POST', '/v1/volumes', { name: 'iso-vol', sizeMb: 16 });
    assert.equal(vol.status, 201, vol.text);
    try {
      unsupported(
        await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', isolation: 'gvisor', volumes: [{ name: 'iso-vol', path: '/data' }] }),
        /attach volumes .*runsc backend does not support volumes/,
      );
      // A container sandbox of the same daemon attaches it.
      const ct = await create({ volumes: [{ name: 'iso-vol', path: '/data' }] });
      assert.equal((await sh(ct.id, 'echo v > /data/f && cat /data/f')).stdout, 'v\n');
      await api(d.url, 'DELETE', `/v1/sandboxes/${ct.id}`);
    } finally {
      await api(d.url, 'DELETE', '/v1/volumes/iso-vol');
    }
    const gv = await create({ isolation: 'gvisor' });
    try {
      unsupported(await api(d.url, 'POST', `/v1/sandboxes/${gv.id}/pause`), /cannot pause the sandbox: the runsc backend does not support pause \(isolation "gvisor"/);
      unsupported(await api(d.url, 'POST', `/v1/sandboxes/${gv.id}/stop`), /cannot stop the sandbox: the runsc backend does not support stop/);
      unsupported(await api(d.url, 'PUT', `/v1/sandboxes/${gv.id}/network`, { egress: 'all' }), /runsc backend cannot give sandboxes egress/);
      unsupported(await api(d.url, 'PUT', `/v1/sandboxes/${gv.id}/network`, { publicPorts: [8080] }), /runsc backend cannot expose sandbox ports/);
      const token = (await api(d.url, 'GET', `/v1/sandboxes/${gv.id}/network/ports/8080`)).json.token as string;
      const port = await api(d.url, 'GET', `/v1/sandboxes/${gv.id}/ports/8080/`, undefined, { 'x-capsule-port-token': token });
      unsupported(port, /runsc backend cannot expose sandbox ports/);
      const now = await api(d.url, 'GET', `/v1/sandboxes/${gv.id}`);
      assert.equal(now.json.state, 'running');
      assert.equal((await sh(gv.id, 'echo still')).stdout, 'still\n');
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${gv.id}`);
    }
  });

  it("a gVisor sandbox's metrics come from its own cgroup and disk (the backend set routes stats)", async () => {
    const gv = await create({ isolation: 'gvisor' });
    try {
      let m: any[] = [];
      for (let i = 0; i < 50 && m.length === 0; i++) {
        const r = await api(d.url, 'GET', `/v1/sandboxes/${gv.id}/metrics`);
        assert.equal(r.status, 200, r.text);
        m = r.json.metrics;
        if (m.length === 0) await new Promise((res) => setTimeout(res, 200));
      }
      assert.ok(m.length > 0, 'sampled');
      assert.ok(m[0].memUsedBytes > 0, JSON.stringify(m[0]));
      assert.ok(m[0].diskQuotaBytes > 0, JSON.stringify(m[0]));
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${gv.id}`);
    }
  });

  it('an isolation this host lacks answers 422 unsupported with the reason; an unknown one 400', async () => {
    const vm = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', isolation: 'microvm' });
    assert.equal(vm.status, 422, vm.text);
    assert.equal(vm.json.error.code, 'unsupported');
    assert.match(vm.json.error.message, new RegExp(`microvm.*not available here: ${MICROVM_ABSENT.source}`));
    const bad = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', isolation: 'vm' });
    assert.equal(bad.status, 400, bad.text);
    assert.equal(bad.json.error.code, 'invalid_argument');
  });

  it('both kinds survive a daemon SIGKILL: each is re-adopted by its own backend, then killed leaving nothing', async () => {
    const gv = await create({ isolation: 'gvisor', timeoutMs: 120_000 });
    const ct = await create({ timeoutMs: 120_000 });
    for (const id of [gv.id, ct.id]) await sh(id, `echo kept-${id} > /root/state`);
    const bg = await api(d.url, 'POST', `/v1/sandboxes/${gv.id}/commands`, { cmd: 'sleep 1; echo bg-done', background: true });
    assert.equal(bg.status, 202, bg.text);
    const dataDir = d.dataDir;
    await d.kill();
    d = await startTestDaemon({ dataDir });
    for (const s of [gv, ct]) {
      const got = await api(d.url, 'GET', `/v1/sandboxes/${s.id}`);
      assert.equal(got.json.state, 'running', d.log());
      assert.equal(got.json.isolation, s.isolation);
      assert.equal((await sh(s.id, 'cat /root/state')).stdout, `kept-${s.id}\n`);
    }
    assert.match((await sh(gv.id, 'dmesg | head -1')).stdout, /gVisor/, 'still the gVisor sandbox');
    const w = await api(d.url, 'GET', `/v1/sandboxes/${gv.id}/commands/${bg.json.pid}/wait?timeoutMs=10000`);
    assert.equal(w.status, 200, w.text);
    assert.equal(w.json.exitCode, 0);
    for (const s of [gv, ct]) {
      await api(d.url, 'DELETE', `/v1/sandboxes/${s.id}`);
      assert.deepEqual(await settledLeftovers(s.id, dataDir), []);
    }
  });
});

describe('all three kinds under one daemon (microVMs under TCG, test-only)', { skip: gvisorSkip() || microvmSkip(), timeout: 5 * 60_000 }, () => {
  const env = { CAPSULE_MICROVM_ALLOW_TCG: '1' };
  before(async () => {
    d = await startTestDaemon({ env });
  });
  after(async () => {
    const dir = d?.dataDir;
    await d?.stop();
    if (dir) await removeDataDir(dir);
  });

  it('a container, a gVisor and a microVM sandbox run side by side, survive a daemon SIGKILL, and are killed leaving nothing', async () => {
    const made: Array<{ isolation: string; id: string }> = [];
    for (const isolation of ['container', 'gvisor', 'microvm']) made.push({ isolation, id: (await create({ isolation, timeoutMs: 180_000 })).id as string });
    // Each kind answers from its own kernel: the microVM's guest kernel is not the host's (its own boot id).
    const hostBoot = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    for (const m of made) {
      await sh(m.id, `echo kept-${m.id} > /root/state`);
      const boot = (await sh(m.id, 'cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo none')).stdout.trim();
      if (m.isolation === 'microvm') assert.notEqual(boot, hostBoot, 'a microVM has its own kernel');
      if (m.isolation === 'container') assert.equal(boot, hostBoot, 'a container shares the host kernel');
    }
    const dataDir = d.dataDir;
    await d.kill();
    d = await startTestDaemon({ dataDir, env });
    for (const m of made) {
      const got = await api(d.url, 'GET', `/v1/sandboxes/${m.id}`);
      assert.equal(got.json.state, 'running', d.log());
      assert.equal(got.json.isolation, m.isolation);
      assert.equal((await sh(m.id, 'cat /root/state')).stdout, `kept-${m.id}\n`);
    }
    for (const m of made) {
      assert.equal((await api(d.url, 'DELETE', `/v1/sandboxes/${m.id}`)).status, 200);
      assert.deepEqual(await settledLeftovers(m.id, dataDir), [], `${m.isolation} sandbox left something`);
    }
  });
});

describe('mixed lifecycle states across a daemon restart', { skip: gvisorSkip() }, () => {
  before(async () => {
    d = await startTestDaemon();
  });
  after(async () => {
    const dir = d?.dataDir;
    await d?.stop();
    if (dir) await removeDataDir(dir);
  });

  it('a stopped and a paused container stay so next to a running gVisor sandbox; each backend recovers its own', async () => {
    const gv = await create({ isolation: 'gvisor', timeoutMs: 120_000 });
    const stopped = await create({ timeoutMs: 120_000 });
    const paused = await create({ timeoutMs: 120_000 });
    await sh(stopped.id, 'echo kept > /root/f');
    assert.equal((await api(d.url, 'POST', `/v1/sandboxes/${stopped.id}/stop`)).json.state, 'stopped');
    assert.equal((await api(d.url, 'POST', `/v1/sandboxes/${paused.id}/pause`)).json.state, 'paused');
    const dataDir = d.dataDir;
    await d.kill();
    d = await startTestDaemon({ dataDir });
    const state = async (id: string) => (await api(d.url, 'GET', `/v1/sandboxes/${id}`)).json.state;
    assert.equal(await state(gv.id), 'running', d.log());
    assert.equal(await state(stopped.id), 'stopped', d.log());
    assert.equal(await state(paused.id), 'paused', d.log());
    assert.match((await sh(gv.id, 'dmesg | head -1')).stdout, /gVisor/);
    assert.equal((await api(d.url, 'POST', `/v1/sandboxes/${stopped.id}/start`)).json.state, 'running');
    assert.equal((await sh(stopped.id, 'cat /root/f')).stdout, 'kept\n');
    assert.equal((await api(d.url, 'POST', `/v1/sandboxes/${paused.id}/resume`)).json.state, 'running');
    // The gVisor sandbox still refuses what its backend cannot do after the restart (its backend came from its record).
    assert.equal((await api(d.url, 'POST', `/v1/sandboxes/${gv.id}/pause`)).status, 422);
    for (const s of [gv, stopped, paused]) {
      await api(d.url, 'DELETE', `/v1/sandboxes/${s.id}`);
      assert.deepEqual(await settledLeftovers(s.id, dataDir), []);
    }
  });
});

describe('the default isolation is a daemon setting; SDK, CLI and MCP pass isolation through', { skip: gvisorSkip() }, () => {
  before(async () => {
    d = await startTestDaemon({ args: ['--isolation', 'gvisor'], env: { CAPSULE_MCP_TEMPLATE: 'busybox' } });
  });
  after(async () => {
    await d?.stop();
  });

  it('a create naming no isolation gets the default (gvisor); info says which is the default', async () => {
    const sb = await create();
    assert.equal(sb.isolation, 'gvisor');
    assert.match((await sh(sb.id, 'dmesg | head -1')).stdout, /gVisor/);
    const info = await getDaemonInfo({ apiUrl: d.url, apiKey: d.adminKey });
    assert.deepEqual(info.backends.filter((b) => b.default).map((b) => b.isolation), ['gvisor']);
    assert.equal(info.runtime.capabilities.isolation, 'gvisor');
    await api(d.url, 'DELETE', `/v1/sandboxes/${sb.id}`);
  });

  it('template builds run in container sandboxes under a gVisor default; sandboxes of the result get gVisor', async () => {
    const r = await api(d.url, 'POST', '/v1/templates?follow=true', { name: 'iso-built', definition: { from: 'busybox', steps: [{ type: 'run', command: 'echo built > /built' }] } });
    assert.equal(r.status, 200, r.text);
    const last = JSON.parse(r.text.trim().split('\n').pop()!);
    assert.equal(last.build?.status, 'succeeded', r.text.slice(-2000));
    const sb = await create({ template: 'iso-built' });
    try {
      assert.equal(sb.isolation, 'gvisor');
      assert.equal((await sh(sb.id, 'cat /built; dmesg | head -1')).stdout.split('\n')[0], 'built');
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${sb.id}`);
      await api(d.url, 'DELETE', '/v1/templates/iso-built');
    }
  });

  it('the SDK creates either kind and reports it', async () => {
    const conn = { apiUrl: d.url, apiKey: d.adminKey };
    const ct = await Sandbox.create({ ...conn, template: 'busybox', isolation: 'container' });
    try {
      assert.equal((await ct.getInfo()).isolation, 'container');
      assert.equal((await ct.commands.run('uname -r')).stdout, `${os.release()}\n`);
    } finally {
      await ct.kill();
    }
  });

  it('the CLI: create --isolation, info shows it, backends lists them', async () => {
    const env = { ...process.env, CAPSULE_URL: d.url };
    const id = (await run(process.execPath, [CLI, 'create', '--template', 'busybox', '--isolation', 'container'], { env })).stdout.trim();
    try {
      assert.match((await run(process.execPath, [CLI, 'info', id], { env })).stdout, /^isolation\s+container$/m);
    } finally {
      await run(process.execPath, [CLI, 'kill', id], { env });
    }
    const table = (await run(process.execPath, [CLI, 'backends'], { env })).stdout;
    assert.match(table, /^gvisor \(default\)\s+yes\s+runsc /m);
    assert.match(table, new RegExp(`^microvm\\s+no\\s+-\\s+${MICROVM_ABSENT.source}`, 'm'));
    await assert.rejects(run(process.execPath, [CLI, 'create', '--isolation', 'vm'], { env }), (e: any) => e.code === 2 && /--isolation must be one of/.test(e.stderr));
  });

  it('capsule doctor reports gVisor, with a trial sandbox', async () => {
    const r = await run(process.execPath, [CLI, 'doctor', '--json']).catch((e: { stdout: string }) => e);
    const gv = (JSON.parse(r.stdout) as Array<{ name: string; ok: boolean; message: string }>).find((c) => c.name === 'gvisor');
    assert.ok(gv?.ok, JSON.stringify(gv));
    assert.match(gv.message, /trial sandbox ran on the ptrace platform/);
  });

  it('MCP sandbox_create takes isolation and reports it', async () => {
    const c = await connectClient('http', d);
    try {
      const r = await c.client.callTool('sandbox_create', { template: 'busybox', isolation: 'container' });
      assert.ok(!r.isError, JSON.stringify(r.content));
      const s = r.structuredContent as { sandbox_id: string; isolation: string };
      assert.equal(s.isolation, 'container');
      await c.client.callTool('sandbox_kill', { sandbox_id: s.sandbox_id });
      const bad = await c.client.callTool('sandbox_create', { template: 'busybox', isolation: 'microvm' });
      assert.equal(bad.isError, true);
      assert.match(JSON.stringify(bad.content), /not available here/);
    } finally {
      await c.close();
    }
  });
});

describe('warm pools per template and isolation', { skip: gvisorSkip() }, () => {
  const poolOf = async (isolation: string) =>
    ((await api(d.url, 'GET', '/v1/info')).json.pools as Array<{ template: string; isolation: string; ready: number; claims: number; misses: number }>).find(
      (p) => p.template === 'busybox' && p.isolation === isolation,
    )!;
  const filled = async () => {
    for (let i = 0; i < 300; i++) {
      const [g, c] = await Promise.all([poolOf('gvisor'), poolOf('container')]);
      if (g?.ready === 1 && c?.ready === 1) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`pools did not fill: ${JSON.stringify((await api(d.url, 'GET', '/v1/info')).json.pools)}\n${d.log().slice(-2000)}`);
  };
  before(async () => {
    d = await startTestDaemon({ args: ['--pool', 'busybox=1', '--pool', 'busybox:gvisor=1'] });
  });
  after(async () => {
    await d?.stop();
  });

  it('a create claims from the pool of its own isolation; limits gVisor cannot change in place go cold', async () => {
    await filled();
    const gv = await create({ isolation: 'gvisor' });
    const ct = await create();
    try {
      assert.equal(gv.isolation, 'gvisor');
      assert.equal(ct.isolation, 'container');
      assert.equal((await poolOf('gvisor')).claims, 1);
      assert.equal((await poolOf('container')).claims, 1);
      assert.match((await sh(gv.id, 'dmesg | head -1')).stdout, /gVisor/, 'the claimed sandbox is a gVisor one');
      assert.equal((await api(d.url, 'GET', `/v1/sandboxes/${gv.id}`)).json.isolation, 'gvisor', 'its record names its backend');
      await filled();
      // gVisor has no in-place limit changes: a create asking other limits is started cold.
      const cold = await create({ isolation: 'gvisor', resources: { pids: 64 } });
      assert.equal((await poolOf('gvisor')).misses, 1);
      assert.equal((await poolOf('gvisor')).ready, 1, 'the pooled one is kept');
      await api(d.url, 'DELETE', `/v1/sandboxes/${cold.id}`);
    } finally {
      for (const s of [gv, ct]) await api(d.url, 'DELETE', `/v1/sandboxes/${s.id}`);
    }
  });
});
