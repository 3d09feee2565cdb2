/**
 * Memory snapshots: hibernate (`pause({ memory: 'disk' })`) and restore, against
 * a real daemon run with runc and CRIU 4, real sandboxes and real SQLite.
 * A Python process (the python template when it is cached, else a busybox
 * shell) keeps a counter and a random token in memory only; after a restore it
 * goes on from the same values. The sandbox's memory cgroup is measured before
 * and after. Skipped only when this host has no working CRIU 4 (or no root).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { api, CLI, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { settledLeftovers } from '../../helpers/leftovers.js';
import { ConflictError, Sandbox, type ConnectionOptions } from '../../../src/sdk/index.js';
import { checkCriu } from '../../../src/runtime/criu.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const criu = process.getuid?.() === 0 ? await checkCriu() : null;
const skip = process.getuid?.() !== 0 ? 'needs root' : !criu?.ok ? `needs CRIU 4 (${criu?.reason})` : false;

const TEMPLATE_CACHE = process.env.CAPSULE_TEMPLATE_CACHE ?? '/var/cache/capsule-test';
const havePython = fs.existsSync(path.join(TEMPLATE_CACHE, 'python-rootfs.tar'));
const template = havePython ? 'python' : 'busybox';

/**
 * Holds 32 MiB and a counter and a token in memory only, and writes "<counter> <token>" to /tmp/state
 * (by rename) ten times a second. After a restore the counter continues and the token is the same.
 */
const PY = [
  'import os, time',
  'blob = bytearray(os.urandom(32 << 20))',
  'token = os.urandom(8).hex()',
  'n = 0',
  'while True:',
  '    n += 1',
  '    open("/tmp/state.new", "w").write(f"{n} {token} {blob[12345]}")',
  '    os.rename("/tmp/state.new", "/tmp/state")',
  '    time.sleep(0.1)',
].join('\n');
/** Busybox stand-in: the counter and token live in the shell's memory; 32 MiB on /dev/shm would not show state, so no blob. */
const SH = 't=$(head -c8 /dev/urandom | od -An -tx1 | tr -d " \\n"); n=0; while :; do n=$((n+1)); echo "$n $t 0" > /tmp/state.new; mv /tmp/state.new /tmp/state; sleep 0.1; done';

function readState(d: TestDaemon, id: string): { n: number; token: string } | null {
  try {
    const [n, token] = fs.readFileSync(path.join(d.dataDir, 'sandboxes', id, 'rootfs', 'tmp', 'state'), 'utf8').trim().split(' ');
    return { n: Number(n), token: token! };
  } catch {
    return null;
  }
}

async function waitFor<T>(what: string, fn: () => T | undefined | null | Promise<T | undefined | null>, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== null) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** The sandbox's memory cgroup usage in bytes, or null when its cgroup is gone. */
function cgroupMemory(id: string): number | null {
  try {
    return Number(fs.readFileSync(`/sys/fs/cgroup/memory/capsule/${id}/memory.usage_in_bytes`, 'utf8'));
  } catch {
    return null;
  }
}

async function startStateful(s: Sandbox, d: TestDaemon): Promise<{ n: number; token: string }> {
  if (havePython) await s.commands.run(`python3 -c '${PY.replace(/'/g, "'\\''")}'`, { background: true });
  else await s.commands.run(SH, { background: true });
  return waitFor('the process state', () => {
    const st = readState(d, s.id);
    return st && st.n >= 3 ? st : null;
  });
}

describe(`hibernate and restore (runc + CRIU, ${template} template)`, { skip, timeout: 10 * 60_000 }, () => {
  const dataDir = tempDataDir();
  let d: TestDaemon;
  let conn: ConnectionOptions;
  const made: Sandbox[] = [];
  const create = async (opts: Parameters<typeof Sandbox.create>[0] = {}) => {
    const s = await Sandbox.create({ ...conn, template, timeoutMs: 10 * 60_000, ...opts });
    made.push(s);
    return s;
  };
  const restart = async () => {
    await d.kill();
    d = await startTestDaemon({ dataDir, env: { CAPSULE_RUNTIME: 'runc' } });
    conn = { apiUrl: d.url };
  };

  before(async () => {
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir, env: { CAPSULE_RUNTIME: 'runc' } });
    conn = { apiUrl: d.url };
  });
  after(async () => {
    for (const s of made) await Sandbox.kill(s.id, conn).catch(() => undefined);
    await d?.stop();
    await removeDataDir(dataDir);
  });

  it('reports memorySnapshot under runc', async () => {
    const info = await api(d.url, 'GET', '/v1/info');
    assert.equal(info.json.runtime.kind, 'runc');
    assert.equal(info.json.runtime.capabilities.memorySnapshot, true, JSON.stringify(info.json.runtime.capabilities));
  });

  it('hibernates a sandbox, frees its memory, and restores its process with its memory (twice)', async () => {
    const s = await create();
    const first = await startStateful(s, d);
    const before = cgroupMemory(s.id);
    assert.ok(before !== null && (!havePython || before > 32 * 1024 * 1024), `cgroup memory before: ${before}`);
    for (let round = 0; round < 2; round++) {
      // Read before: once hibernated its files are unmounted (the dump comes a moment later, so the counter only grows).
      const at = readState(d, s.id);
      let t = performance.now();
      const h = await s.pause({ memory: 'disk' });
      const hibernateMs = performance.now() - t;
      assert.equal(h.state, 'hibernated');
      assert.equal(cgroupMemory(s.id), null, 'its memory cgroup is gone: no memory held');
      assert.ok(fs.existsSync(path.join(d.dataDir, 'sandboxes', s.id, 'checkpoint')), 'the image is on disk');
      await sleep(400);
      t = performance.now();
      const r = await s.resume();
      const restoreMs = performance.now() - t;
      assert.equal(r.state, 'running');
      assert.ok(!fs.existsSync(path.join(d.dataDir, 'sandboxes', s.id, 'checkpoint')), 'the image is gone once it runs');
      const after = await waitFor('the counter to move on', () => {
        const st = readState(d, s.id);
        return st && at && st.n > at.n ? st : null;
      });
      assert.equal(after.token, first.token, 'the same process, with the same memory');
      assert.ok(after.n > at!.n && after.n < at!.n + 50, `the counter continues from ${at!.n} (now ${after.n}), not from 1`);
      const mem = cgroupMemory(s.id);
      console.log(`# round ${round}: hibernate ${hibernateMs.toFixed(0)} ms, restore ${restoreMs.toFixed(0)} ms; cgroup memory ${(before! / 2 ** 20).toFixed(1)} MiB before, none while hibernated, ${((mem ?? 0) / 2 ** 20).toFixed(1)} MiB after`);
    }
    // Commands work again, and the background process is still known and running.
    const out = await s.commands.run('echo ok');
    assert.equal(out.stdout.trim(), 'ok');
    const procs = await s.commands.list();
    assert.ok(procs.some((p) => p.running && p.pid !== undefined && (p.cmd.join(' ').includes('python3') || p.cmd.join(' ').includes('/tmp/state'))), JSON.stringify(procs));
  });

  it('a command on a hibernated sandbox answers 409 without autoResume and restores it with autoResume', async () => {
    const plain = await create();
    const auto = await create({ lifecycle: { autoResume: true } });
    await plain.pause({ memory: 'disk' });
    await auto.pause({ memory: 'disk' });
    await assert.rejects(plain.commands.run('true'), (e: unknown) => e instanceof ConflictError && /hibernated/.test((e as Error).message));
    const raw = await api(d.url, 'POST', `/v1/sandboxes/${plain.id}/commands`, { cmd: 'true' });
    assert.equal(raw.status, 409, raw.text);
    assert.equal((await plain.getInfo()).state, 'hibernated');
    const r = await auto.commands.run('echo woke');
    assert.equal(r.stdout.trim(), 'woke');
    assert.equal((await auto.getInfo()).state, 'running');
    // Files too.
    await auto.pause({ memory: 'disk' });
    await auto.files.write('/tmp/f', 'x');
    assert.equal((await auto.getInfo()).state, 'running');
  });

  it('a hibernated sandbox survives a daemon SIGKILL and restart, and resumes with its memory', async () => {
    const s = await create();
    const first = await startStateful(s, d);
    const at = readState(d, s.id)!;
    await s.pause({ memory: 'disk' });
    await restart();
    const s2 = await Sandbox.connect(s.id, conn);
    assert.equal((await s2.getInfo()).state, 'hibernated');
    await s2.resume();
    const after = await waitFor('the counter to move on', () => {
      const st = readState(d, s.id);
      return st && st.n > at.n ? st : null;
    });
    assert.equal(after.token, first.token);
    assert.ok(after.n < at.n + 50, `continues from ${at.n}, now ${after.n}`);
    assert.equal((await s2.commands.run('echo back')).stdout.trim(), 'back');
  });

  it('restores with the agent it was hibernated with, though the daemon\'s agent changed meanwhile (an upgrade)', async () => {
    const s = await create();
    await s.pause({ memory: 'disk' });
    const agent = path.join(d.dataDir, 'bin', 'capsule-agent');
    const original = fs.readFileSync(agent);
    try {
      // Another build: one byte longer (CRIU refuses to map a file whose size changed).
      fs.writeFileSync(agent + '.new', Buffer.concat([original, Buffer.from([0])]), { mode: 0o755 });
      fs.renameSync(agent + '.new', agent);
      await s.resume();
      assert.equal((await s.commands.run('echo up')).stdout.trim(), 'up');
    } finally {
      fs.writeFileSync(agent + '.new', original, { mode: 0o755 });
      fs.renameSync(agent + '.new', agent);
    }
  });

  it('kill of a hibernated sandbox leaves nothing: images, mounts, cgroups, files', async () => {
    const s = await create();
    await startStateful(s, d);
    await s.pause({ memory: 'disk' });
    const images = path.join(d.dataDir, 'sandboxes', s.id, 'checkpoint');
    assert.ok(fs.existsSync(images));
    await s.kill();
    const left = await settledLeftovers(s.id, d.dataDir);
    assert.deepEqual(left, [], `left ${left.join(', ')}`);
    assert.ok(!fs.existsSync(images));
    assert.equal((await api(d.url, 'GET', `/v1/sandboxes/${s.id}`)).json.state, 'killed');
  });

  it('idleness hibernates a sandbox whose policy says so, and the next command restores it', async () => {
    const s = await create({ lifecycle: { onTimeout: 'hibernate', autoResume: true, idleMs: 1500 } });
    const first = await startStateful(s, d);
    await waitFor('the idle policy to hibernate it', async () => ((await s.getInfo()).state === 'hibernated' ? true : undefined), 20_000);
    assert.equal(cgroupMemory(s.id), null);
    assert.equal((await s.commands.run('echo awake')).stdout.trim(), 'awake');
    const st = await waitFor('the process state', () => readState(d, s.id));
    assert.equal(st.token, first.token, 'the same process after the restore');
  });

  it('the CLI hibernates with `capsule pause --memory disk` and restores with `capsule resume`', async () => {
    const s = await create();
    const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { env: { ...process.env, CAPSULE_URL: d.url }, encoding: 'utf8', timeout: 60_000 });
    const p = cli('pause', '--memory', 'disk', s.id);
    assert.equal(p.status, 0, p.stderr);
    assert.match(p.stdout, new RegExp(`${s.id} hibernated`));
    const bad = cli('pause', '--memory', 'swap', s.id);
    assert.notEqual(bad.status, 0);
    const r = cli('resume', s.id);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`${s.id} running`));
  });

  it('fork with memory: N forks continue the same process from the same instant, each with its own id, hostname and files', async () => {
    const s = await create();
    const first = await startStateful(s, d);
    const at = readState(d, s.id)!;
    const t = performance.now();
    const forks = await s.fork({ count: 3, memory: true });
    const forkMs = performance.now() - t;
    made.push(...forks);
    assert.equal(forks.length, 3);
    const ids = new Set(forks.map((f) => f.id));
    assert.equal(ids.size, 3);
    for (const f of forks) {
      assert.notEqual(f.id, s.id);
      const st = await waitFor(`fork ${f.id}'s process state`, () => {
        const v = readState(d, f.id);
        return v && v.n > at.n ? v : null;
      });
      assert.equal(st.token, first.token, 'the same process memory as the source');
      assert.ok(st.n < at.n + 100, `fork ${f.id} continues from about ${at.n} (now ${st.n}), not from 1`);
      assert.equal((await f.commands.run('hostname')).stdout.trim(), f.id);
      // Renamed after its restore: the agent names it anew in /etc/hosts when the daemon connects (agent/hosts.c).
      const hosts = (await f.commands.run('cat /etc/hosts')).stdout;
      assert.match(hosts, new RegExp(`^127\\.0\\.1\\.1\\t${f.id}\\t# capsule: this sandbox$`, 'm'));
      assert.ok(!hosts.includes(s.id), hosts);
      const procs = await f.commands.list();
      assert.ok(procs.some((p) => p.running && (p.cmd.join(' ').includes('python3') || p.cmd.join(' ').includes('/tmp/state'))), JSON.stringify(procs));
    }
    // Own copy-on-write files: a write in one fork is not seen by the others nor by the source.
    assert.equal((await forks[0]!.commands.run('echo mine > /tmp/only0')).exitCode, 0);
    assert.notEqual((await forks[1]!.commands.run('cat /tmp/only0')).exitCode, 0);
    assert.notEqual((await s.commands.run('cat /tmp/only0')).exitCode, 0);
    // The source runs on, its process too.
    const later = await waitFor('the source to go on', () => {
      const v = readState(d, s.id);
      return v && v.n > at.n + 5 ? v : null;
    });
    assert.equal(later.token, first.token);
    console.log(`# fork with memory: 3 forks in ${forkMs.toFixed(0)} ms`);
    for (const f of forks) await f.kill();
    for (const f of forks) assert.deepEqual(await settledLeftovers(f.id, d.dataDir), []);
    assert.deepEqual(fs.readdirSync(path.join(d.dataDir, 'sandboxes', s.id)).filter((e) => e.startsWith('fork-')), [], 'fork images removed');
  });

  it('stop of a hibernated sandbox drops its memory image and keeps its files', async () => {
    const s = await create();
    assert.equal((await s.commands.run('echo kept > ~/f')).exitCode, 0);
    await s.pause({ memory: 'disk' });
    await s.stop();
    assert.equal((await s.getInfo()).state, 'stopped');
    assert.ok(!fs.existsSync(path.join(d.dataDir, 'sandboxes', s.id, 'checkpoint')));
    await s.start();
    assert.equal((await s.commands.run('cat ~/f')).stdout.trim(), 'kept');
  });
});

describe('memorySnapshot without runc', { skip: process.getuid?.() !== 0 ? 'needs root' : false }, () => {
  let d: TestDaemon;
  const dataDir = tempDataDir();
  before(async () => {
    d = await startTestDaemon({ dataDir, env: { CAPSULE_RUNTIME: 'crun' } });
  });
  after(async () => {
    await d?.stop();
    await removeDataDir(dataDir);
  });

  it('is false with the reason under crun, and pause with memory disk answers with it', async () => {
    const info = await api(d.url, 'GET', '/v1/info');
    const caps = info.json.runtime.capabilities;
    assert.equal(caps.memorySnapshot, false);
    assert.match(caps.reasons.memorySnapshot, /runc/);
    const s = await Sandbox.create({ apiUrl: d.url, template: 'busybox' });
    try {
      const r = await api(d.url, 'POST', `/v1/sandboxes/${s.id}/pause`, { memory: 'disk' });
      assert.ok(r.status >= 400 && r.status < 500, r.text);
      assert.match(r.text, /runc|memorySnapshot|memory snapshot/i);
      assert.equal((await s.getInfo()).state, 'running');
    } finally {
      await s.kill();
    }
    const refused = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', lifecycle: { onTimeout: 'hibernate' } });
    assert.equal(refused.status, 422, refused.text);
    assert.match(refused.text, /memorySnapshot/);
  });
});
