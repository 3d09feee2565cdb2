/**
 * Pause/resume, stop/start, the lifecycle policies and restarts, against real
 * daemons and real crun sandboxes, through the SDK and the REST API. Every
 * sandbox ended here is checked for leftovers (mounts, loop devices, cgroups,
 * processes, files).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { api, startTestDaemon, tempDataDir, removeDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { leftovers, sandboxRows, settledLeftovers } from '../../helpers/leftovers.js';
import { ConflictError, Sandbox, type ConnectionOptions } from '../../../src/sdk/index.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A counter loop whose file is replaced by a rename, so a frozen half-write is never read. */
const COUNTER = 'i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/count; done';

/** The counter as the host sees it in the sandbox's root (readable while the sandbox is frozen). */
function hostCounter(d: TestDaemon, id: string): number {
  return Number(fs.readFileSync(path.join(d.dataDir, 'sandboxes', id, 'rootfs', 'tmp', 'count'), 'utf8'));
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, ms = 8000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

async function assertGone(d: TestDaemon, id: string): Promise<void> {
  const left = await settledLeftovers(id, d.dataDir);
  assert.deepEqual(left, [], `sandbox ${id} left ${left.join(', ')}`);
}

/** What a frozen sandbox's freezer cgroup says, read on the host. */
function freezerOf(id: string): string {
  return fs.readFileSync(`/sys/fs/cgroup/freezer/capsule/${id}/freezer.state`, 'utf8').trim();
}

describe('sandbox lifecycle (real sandboxes)', () => {
  let d: TestDaemon;
  let conn: ConnectionOptions;
  const made: Sandbox[] = [];
  const create = async (opts: Parameters<typeof Sandbox.create>[0] = {}) => {
    const s = await Sandbox.create({ ...conn, template: 'busybox', ...opts });
    made.push(s);
    return s;
  };

  before(async () => {
    d = await startTestDaemon();
    conn = { apiUrl: d.url };
  });
  after(async () => {
    for (const s of made) await s.kill().catch(() => undefined);
    await d?.stop();
  });

  it('pause stops a counter and resume continues it; the timeout clock stops meanwhile', async () => {
    const s = await create({ timeoutMs: 60_000 });
    const loop = await s.commands.run(COUNTER, { background: true });
    await waitFor('the counter', async () => (fs.existsSync(path.join(d.dataDir, 'sandboxes', s.id, 'rootfs', 'tmp', 'count')) ? true : undefined));
    await sleep(100);
    const paused = await s.pause();
    assert.equal(paused.state, 'paused');
    assert.equal(freezerOf(s.id), 'FROZEN');
    const frozenAt = hostCounter(d, s.id);
    await sleep(1200);
    assert.equal(hostCounter(d, s.id), frozenAt, 'nothing counts while paused');
    const info = await s.getInfo();
    assert.ok(info.timeoutRemainingMs! <= 60_000 && info.timeoutRemainingMs! > 55_000, `remaining ${info.timeoutRemainingMs}`);
    // While paused, expiresAt is the retention deadline (7 days by default).
    assert.ok(Date.parse(info.expiresAt) > Date.now() + 6 * 24 * 3600_000);

    const resumed = await s.resume();
    assert.equal(resumed.state, 'running');
    // The clock went on from what was left, not from a fresh 60 s minus the pause.
    const left = Date.parse(resumed.expiresAt) - Date.now();
    assert.ok(left > 55_000 && left <= info.timeoutRemainingMs! + 100, `left ${left}`);
    const r = await s.commands.run('cat /tmp/count');
    const after = Number(r.stdout);
    assert.ok(after > frozenAt, `the loop went on from ${frozenAt} to ${after}`);
    assert.equal((await s.commands.run(`kill -0 ${loop.pid} && echo alive`)).stdout, 'alive\n', 'the same loop, not a new one');
  });

  it('1,000 pause/resume cycles with a file written between each lose nothing', async () => {
    const s = await create({ timeoutMs: 600_000 });
    const loop = await s.commands.run(COUNTER, { background: true });
    await s.files.makeDir('/cycles');
    const t0 = performance.now();
    const n = 1000;
    for (let i = 0; i < n; i++) {
      await s.pause();
      await s.resume();
      await s.files.write(`/cycles/${i}`, `${i}\n`);
    }
    const ms = performance.now() - t0;
    console.log(`# ${n} pause/resume/write cycles: ${(ms / 1000).toFixed(1)} s (${(ms / n).toFixed(1)} ms each)`);
    const r = await s.commands.run(`ls /cycles | wc -l; cat /cycles/* | awk '{ s += $1 } END { print s }'; kill -0 ${loop.pid} && echo alive`);
    assert.equal(r.stdout, `${n}\n${(n * (n - 1)) / 2}\nalive\n`, 'every file with its content, and the counter loop still there');
    const c1 = Number((await s.commands.run('cat /tmp/count')).stdout);
    await sleep(50);
    assert.ok(Number((await s.commands.run('cat /tmp/count')).stdout) > c1, 'and it still counts');
  });

  it('commands and file calls to a paused or stopped sandbox: 409 naming the state, or a transparent wake with autoResume', async () => {
    const plain = await create();
    await plain.pause();
    await assert.rejects(plain.commands.run('true'), (e: unknown) => e instanceof ConflictError && /is paused/.test(e.message));
    const raw = await api(d.url, 'POST', `/v1/sandboxes/${plain.id}/commands`, { cmd: 'true' });
    assert.equal(raw.status, 409);
    assert.equal(raw.json.error.details.state, 'paused');
    const file = await api(d.url, 'GET', `/v1/sandboxes/${plain.id}/files?path=/etc/passwd`);
    assert.equal(file.status, 409);
    // The wrong verb for a state names it too.
    const start = await api(d.url, 'POST', `/v1/sandboxes/${plain.id}/start`);
    assert.equal(start.status, 409);
    assert.match(start.json.error.message, /cannot start: sandbox \S+ is paused/);
    await plain.stop();
    const pause = await api(d.url, 'POST', `/v1/sandboxes/${plain.id}/pause`);
    assert.equal(pause.status, 409);
    assert.equal(pause.json.error.details.state, 'stopped');
    await assert.rejects(plain.files.read('/etc/passwd'), (e: unknown) => e instanceof ConflictError && /is stopped/.test(e.message));

    const auto = await create({ lifecycle: { autoResume: true } });
    await auto.commands.run('echo 41 > /root/n');
    await auto.pause();
    const r = await auto.commands.run('echo $(( $(cat /root/n) + 1 ))');
    assert.equal(r.stdout, '42\n');
    assert.equal((await auto.getInfo()).state, 'running');
    await auto.stop();
    assert.equal(await auto.files.read('/root/n'), '41\n', 'a file call starts a stopped sandbox first');
    assert.equal((await auto.getInfo()).state, 'running');
    // Concurrent calls to a sleeping sandbox wake it once and all answer.
    await auto.pause();
    const all = await Promise.all(Array.from({ length: 8 }, (_, i) => auto.commands.run(`echo ${i}`)));
    assert.deepEqual(all.map((x) => x.stdout), Array.from({ length: 8 }, (_, i) => `${i}\n`));
  });

  it('stop/start keeps files, envs, metadata and limits, loses processes, and costs no memory or processes while stopped', async () => {
    const s = await create({ envs: { GREETING: 'hi' }, metadata: { job: 'x' }, resources: { memoryMb: 96, pids: 50 }, timeoutMs: 120_000 });
    await s.commands.run('echo kept > /root/file; mkdir -p /work && head -c 300000 /dev/urandom > /work/blob; md5sum /work/blob > /root/sum');
    const bg = await s.commands.run('sleep 1000', { background: true });
    const stopped = await s.stop();
    assert.equal(stopped.state, 'stopped');
    assert.ok(stopped.timeoutRemainingMs! > 100_000);
    // Only its files are left: no mount, loop device, cgroup, process or socket.
    assert.deepEqual(leftovers(s.id, d.dataDir), ['sandbox dir']);
    assert.equal((await s.commands.list()).length, 0, 'no processes are tracked for a stopped sandbox');

    const started = await s.start();
    assert.equal(started.state, 'running');
    assert.equal(started.id, s.id);
    assert.deepEqual(started.metadata, { job: 'x' });
    const r = await s.commands.run('cat /root/file; md5sum -c /root/sum >/dev/null && echo intact; echo $GREETING; hostname; cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || true');
    const [file, intact, env, host] = r.stdout.split('\n');
    assert.deepEqual([file, intact, env, host], ['kept', 'intact', 'hi', s.id]);
    const ps = await s.commands.run('ps -o pid,comm');
    assert.doesNotMatch(ps.stdout, /sleep/, 'the background process of the earlier run is gone');
    assert.equal(fs.readFileSync(`/sys/fs/cgroup/memory/capsule/${s.id}/memory.limit_in_bytes`, 'utf8').trim(), String(96 * 1024 * 1024));
    assert.equal(fs.readFileSync(`/sys/fs/cgroup/pids/capsule/${s.id}/pids.max`, 'utf8').trim(), '50');
    assert.ok(!(await s.commands.list()).some((p) => p.pid === bg.pid && p.running));
    // The remounted disk and overlay show the sandbox no host path either (the loop device is a new one).
    const mi = await s.commands.run('cat /proc/self/mountinfo');
    assert.match(mi.stdout, / - overlay overlay .*lowerdir=lower/);
    assert.ok(!mi.stdout.includes(d.dataDir) && !/\/dev\/loop\d/.test(mi.stdout) && !/(lowerdir|upperdir|workdir)=\//.test(mi.stdout), mi.stdout);

    // Killing a stopped sandbox removes its disk too.
    await s.stop();
    await s.kill();
    await assertGone(d, s.id);
  });

  it('a paused sandbox is killed cleanly too', async () => {
    const s = await create();
    await s.commands.run(COUNTER, { background: true });
    await s.pause();
    const k = await s.kill();
    assert.equal(k.state, 'killed');
    await assertGone(d, s.id);
  });

  it('auto-pause fires after the idle time, not under a running command, and the next exec resumes it', async () => {
    const s = await create({ lifecycle: { onTimeout: 'pause', autoResume: true, idleMs: 1500 } });
    // A foreground command longer than idleMs: the caller waits on it, so the sandbox is not idle.
    const long = await s.commands.run('sleep 3; echo done');
    assert.equal(long.stdout, 'done\n');
    assert.equal((await s.getInfo()).state, 'running');
    const t0 = Date.now();
    await waitFor('auto-pause', async () => ((await s.getInfo()).state === 'paused' ? true : undefined));
    const idleFor = Date.now() - t0;
    assert.ok(idleFor >= 1000, `paused after ${idleFor} ms of idleness`);
    assert.equal(freezerOf(s.id), 'FROZEN');
    const r = await s.commands.run('echo awake');
    assert.equal(r.stdout, 'awake\n');
    assert.equal((await s.getInfo()).state, 'running');
  });

  it('the timeout stops a sandbox whose policy says so; retention deletes a stopped sandbox', async () => {
    const s = await create({ timeoutMs: 1000, lifecycle: { onTimeout: 'stop', deleteAfterMs: 2500 } });
    await s.commands.run('echo x > /root/x');
    await waitFor('the timeout to stop it', async () => ((await s.getInfo()).state === 'stopped' ? true : undefined));
    const info = await s.getInfo();
    assert.equal(info.timeoutRemainingMs, 0);
    assert.deepEqual(leftovers(s.id, d.dataDir), ['sandbox dir']);
    const gone = await waitFor('retention', async () => {
      const i = await s.getInfo();
      return i.state === 'expired' ? i : undefined;
    });
    assert.match(gone.endReason ?? '', /kept stopped for 2500 ms \(lifecycle.deleteAfterMs\) and deleted/);
    await assertGone(d, s.id);
  });

  it('bad lifecycle input answers 400, an unknown sandbox 404', async () => {
    const bad = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', lifecycle: { onTimeout: 'freeze' } });
    assert.equal(bad.status, 400, bad.text);
    const short = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', lifecycle: { idleMs: 5 } });
    assert.equal(short.status, 400, short.text);
    const body = await api(d.url, 'POST', '/v1/sandboxes/sbx-000000000000/resume', { timeoutMs: 5 });
    assert.equal(body.status, 400, body.text);
    const ghost = await api(d.url, 'POST', '/v1/sandboxes/sbx-000000000000/pause');
    assert.equal(ghost.status, 404, ghost.text);
  });
});

describe('paused and stopped sandboxes across a daemon SIGKILL', () => {
  const dataDir = tempDataDir();
  fs.chmodSync(dataDir, 0o755);
  let d: TestDaemon;
  before(async () => {
    d = await startTestDaemon({ dataDir });
  });
  after(async () => {
    await d?.stop();
    await removeDataDir(dataDir);
  });

  it('a paused and a stopped sandbox survive a SIGKILL and restart: the paused one untouched until resumed', async () => {
    const c = { apiUrl: d.url };
    const paused = await Sandbox.create({ ...c, template: 'busybox', envs: { WHO: 'paused' } });
    const stopped = await Sandbox.create({ ...c, template: 'busybox', lifecycle: { autoResume: true } });
    await paused.commands.run(COUNTER, { background: true });
    await waitFor('the counter', async () => (fs.existsSync(path.join(dataDir, 'sandboxes', paused.id, 'rootfs', 'tmp', 'count')) ? true : undefined));
    await stopped.commands.run('echo survived > /root/f');
    await paused.pause();
    await stopped.stop();
    const frozenAt = hostCounter(d, paused.id);

    await d.kill();
    d = await startTestDaemon({ dataDir });
    const c2 = { apiUrl: d.url };
    const p2 = await Sandbox.connect(paused.id, c2);
    const s2 = await Sandbox.connect(stopped.id, c2);
    assert.equal((await p2.getInfo()).state, 'paused');
    assert.equal((await s2.getInfo()).state, 'stopped');
    // The restart re-adopted it without thawing it or talking to its frozen agent.
    assert.equal(freezerOf(paused.id), 'FROZEN');
    await sleep(300);
    assert.equal(hostCounter(d, paused.id), frozenAt);
    assert.deepEqual(leftovers(stopped.id, dataDir), ['sandbox dir']);

    await p2.resume();
    const r = await p2.commands.run('cat /tmp/count; echo $WHO');
    const [count, who] = r.stdout.split('\n');
    assert.ok(Number(count) > frozenAt, `counter went on from ${frozenAt} to ${count}`);
    assert.equal(who, 'paused');
    // The counter loop started before the restart was re-attached on resume.
    assert.ok((await p2.commands.list()).some((p) => p.running && p.cmd.join(' ').includes('while')));
    assert.equal(await s2.files.read('/root/f'), 'survived\n', 'autoResume starts it at the first call');

    await p2.kill();
    await s2.kill();
    await assertGone(d, paused.id);
    await assertGone(d, stopped.id);
    assert.equal(sandboxRows(dataDir, paused.id).processRows, 0);
  });

  it('a paused sandbox whose processes, mounts and cgroups are gone (a host reboot) comes back stopped, and starts with its files', async () => {
    const c = { apiUrl: d.url };
    const s = await Sandbox.create({ ...c, template: 'busybox' });
    await s.commands.run('echo 1 > /root/f');
    await s.pause();
    await d.kill();
    // What a host reboot leaves: no processes, no mounts, no loop devices, no cgroups; the disk and the rows stay.
    fs.writeFileSync(`/sys/fs/cgroup/freezer/capsule/${s.id}/freezer.state`, 'THAWED');
    for (const pid of fs.readFileSync(`/sys/fs/cgroup/pids/capsule/${s.id}/cgroup.procs`, 'utf8').split('\n').filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // gone
      }
    }
    await sleep(200);
    fs.rmSync(path.join(dataDir, 'runtime', s.id), { recursive: true, force: true });
    spawnSync('umount', [path.join(dataDir, 'sandboxes', s.id, 'rootfs')]);
    spawnSync('umount', [path.join(dataDir, 'sandboxes', s.id, 'disk')]);
    for (const ctrl of fs.readdirSync('/sys/fs/cgroup')) {
      const dir = `/sys/fs/cgroup/${ctrl}/capsule/${s.id}`;
      if (fs.existsSync(dir)) fs.rmdirSync(dir);
    }
    fs.rmSync(path.join(dataDir, 'run', `${s.id}.sock`), { force: true });
    assert.deepEqual(await settledLeftovers(s.id, dataDir).then((l) => l.filter((x) => x !== 'sandbox dir')), []);

    d = await startTestDaemon({ dataDir });
    const s2 = await Sandbox.connect(s.id, { apiUrl: d.url });
    assert.equal((await s2.getInfo()).state, 'stopped', 'a paused sandbox whose processes are gone comes back stopped, with its files');
    await s2.start();
    assert.equal((await s2.commands.run('cat /root/f')).stdout, '1\n');
    await s2.kill();
    await assertGone(d, s.id);
  });
});
