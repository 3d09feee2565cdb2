/**
 * OciRuntimeDriver against the real crun (and runc) on this host: no mocks.
 * Needs root, crun and busybox-static; skips loudly otherwise.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { OciRuntimeDriver } from '../../../src/runtime/driver.js';
import { ensureHostReady, runDoctor } from '../../../src/runtime/doctor.js';
import { cgroupMounts } from '../../../src/runtime/cgroups.js';
import { readMountPoints } from '../../../src/runtime/overlay.js';
import { isCapsuleError } from '../../../src/errors/index.js';
import { AGENT_BUILD_PATH } from '../../../src/daemon.js';
import { assertProbeVerdicts, ID_BASE, ID_SIZE, makeFixture, skipReason, specFor, type Fixture } from './fixture.js';

const skip = skipReason();
if (skip) console.warn(`SKIPPING runtime integration tests: ${skip}`);

const RESOURCES = { cpus: 0.5, memoryMb: 128, pids: 64, diskMb: 64 };

/** CAP_ numbers of the granted set (see bundle.ts). */
const CAP_BITS = [0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 31];
const EXPECTED_CAPEFF = CAP_BITS.reduce((m, b) => m | (1n << BigInt(b)), 0n);

/** Running, i.e. present and not a zombie waiting for its (re-)parent to reap it. */
function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** The host's mountinfo line for a mount point, or null. */
function hostMountLine(mountPoint: string): string | null {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === mountPoint) ?? null;
}

/** Loop devices whose backing file is below dir (from sysfs). */
function loopDevicesBelow(dir: string): string[] {
  const out: string[] = [];
  for (const dev of fs.readdirSync('/sys/block').filter((d) => d.startsWith('loop'))) {
    try {
      const backing = fs.readFileSync(`/sys/block/${dev}/loop/backing_file`, 'utf8').trim();
      if (backing.startsWith(`${dir}/`)) out.push(dev);
    } catch {
      // not bound to a file
    }
  }
  return out;
}

function p50(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)] ?? NaN;
}

describe('OciRuntimeDriver (crun)', { skip: skip ?? false }, () => {
  let fx: Fixture;
  let driver: OciRuntimeDriver;
  const made = new Set<string>();

  function exec(id: string, argv: string[]) {
    const r = spawnSync('crun', ['--root', fx.paths.runtimeState, 'exec', '--no-new-privs', id, ...argv], { encoding: 'utf8', timeout: 10_000 });
    return { code: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  }

  async function create(id: string) {
    made.add(id);
    return driver.create(specFor(id, fx.templateRootfs, RESOURCES));
  }

  async function assertNoLeftovers(id: string) {
    const dir = fx.paths.sandboxDir(id);
    assert.equal(fs.existsSync(dir), false, `sandbox dir ${dir} remains`);
    assert.equal(fs.existsSync(fx.paths.agentSocket(id)), false, 'agent socket remains');
    const mounts = (await readMountPoints()).filter((m) => m === dir || m.startsWith(`${dir}/`));
    assert.deepEqual(mounts, [], 'mounts remain');
    // The kernel detaches an auto-clearing loop device in a work item just after the unmount.
    let loops = loopDevicesBelow(dir);
    for (let i = 0; i < 40 && loops.length > 0; i++) {
      await new Promise((r) => setTimeout(r, 25));
      loops = loopDevicesBelow(dir);
    }
    assert.deepEqual(loops, [], 'loop devices remain bound to the disk image');
    for (const m of await cgroupMounts()) {
      const cg = path.join(m.mountPoint, 'capsule', id);
      assert.equal(fs.existsSync(cg), false, `cgroup dir ${cg} remains`);
    }
    assert.equal(fs.existsSync(path.join(fx.paths.runtimeState, id)), false, 'crun state remains');
    assert.ok(!(await driver.list()).includes(id));
    assert.equal((await driver.inspect(id)).status, 'missing');
  }

  before(async () => {
    await ensureHostReady('crun'); // applies the hybrid-cgroup fix on this host
    fx = makeFixture();
    driver = new OciRuntimeDriver({
      runtime: 'crun',
      paths: fx.paths,
      idMapBase: ID_BASE,
      idMapSize: ID_SIZE,
      agentBinary: fx.agentBinary,
    });
  });

  after(async () => {
    for (const id of made) {
      try {
        await driver.destroy(id);
      } catch (e) {
        console.error(`cleanup of sandbox ${id} failed:`, e);
      }
    }
    fx?.cleanup();
  });

  test('doctor is happy on this host (after fixes)', async () => {
    const checks = await runDoctor({ runtime: 'crun', fix: false });
    for (const c of checks) assert.ok(c.ok, `${c.name}: ${c.message} (fix: ${c.fix})`);
    assert.match((await driver.probe()), /^crun \d+\.\d+/);
    assert.match(driver.name, /^crun /);
  });

  test('create runs the agent as init with the sandbox isolation', async () => {
    const id = 'sbx-iso';
    const info = await create(id);
    assert.equal(info.status, 'running');
    assert.ok(info.pid && info.pid > 1, 'has a host pid');
    assert.deepEqual(await driver.inspect(id), info);
    assert.ok((await driver.list()).includes(id));

    // identity and namespaces
    assert.match(exec(id, ['id']).stdout, /uid=0\(root\) gid=0\(root\)/);
    assert.equal(exec(id, ['hostname']).stdout.trim(), id);
    const ifaces = exec(id, ['cat', '/proc/net/dev'])
      .stdout.split('\n')
      .slice(2)
      .map((l) => l.split(':')[0]?.trim())
      .filter(Boolean);
    assert.deepEqual(ifaces, ['lo']);
    const hostUidMap = fs.readFileSync(`/proc/${info.pid}/uid_map`, 'utf8').trim().split(/\s+/);
    assert.deepEqual(hostUidMap, ['0', String(ID_BASE), String(ID_SIZE)]);

    // masked and read-only paths
    assert.equal(exec(id, ['cat', '/proc/kcore']).stdout, '');
    assert.equal(exec(id, ['cat', '/proc/keys']).stdout, '');
    const sysWrite = exec(id, ['sh', '-c', 'echo 1 > /proc/sys/kernel/ns_last_pid']);
    assert.notEqual(sysWrite.code, 0, '/proc/sys is writable');
    assert.notEqual(exec(id, ['sh', '-c', 'echo x > /sys/kernel/test']).code, 0, '/sys is writable');
    assert.notEqual(exec(id, ['mount', '-t', 'tmpfs', 'none', '/tmp']).code, 0, 'mount worked');

    // privileges: caps, seccomp, no_new_privs — for init (the agent, whose children inherit
    // them) and for a process entered with `crun exec --no-new-privs`
    for (const who of ['/proc/1/status', '/proc/self/status']) {
      const status = exec(id, ['cat', who]).stdout;
      const field = (k: string) => status.match(new RegExp(`^${k}:\\s*(\\S+)`, 'm'))?.[1];
      assert.equal(BigInt(`0x${field('CapEff')}`), EXPECTED_CAPEFF, `${who} CapEff`);
      assert.equal(BigInt(`0x${field('CapBnd')}`), EXPECTED_CAPEFF, `${who} CapBnd`);
      assert.equal(field('Seccomp'), '2', `${who} Seccomp`);
      assert.equal(field('NoNewPrivs'), '1', `${who} NoNewPrivs`);
    }

    // seccomp tightening: no nested namespaces, but fork and threads work
    const un = exec(id, ['unshare', '-U', 'true']);
    assert.notEqual(un.code, 0, 'unshare -U succeeded inside the sandbox');
    assert.notEqual(exec(id, ['unshare', '-n', 'true']).code, 0, 'unshare -n succeeded');
    const fork = exec(id, ['sh', '-c', 'true & wait; (echo sub) ; echo ok']);
    assert.equal(fork.code, 0, fork.stderr);
    assert.equal(fork.stdout, 'sub\nok\n');

    // the same, syscall by syscall, from a static C probe (skipped without gcc)
    assertProbeVerdicts(fx, exec, id);

    // the root is writable and writes land in disk/upper, owned by the mapped root, on the sandbox's own ext4
    assert.equal(exec(id, ['sh', '-c', 'echo hi > /hello && mkdir -p /var/x && echo y > /var/x/f']).code, 0);
    const upper = path.join(fx.paths.sandboxDir(id), 'disk', 'upper');
    const diskMount = hostMountLine(path.join(fx.paths.sandboxDir(id), 'disk'));
    // An ext4 on a loop device (major 7), mounted through the sandbox dir's own node of it (disk.dev).
    assert.match(diskMount ?? '', / 7:\d+ \/ .* - ext4 (disk\.dev|\/dev\/loop\d+) /, `the sandbox disk is a loop-mounted ext4: ${diskMount}`);
    assert.equal(fs.statSync(upper).dev, fs.statSync(path.join(fx.paths.sandboxDir(id), 'disk')).dev);
    assert.notEqual(fs.statSync(upper).dev, fs.statSync(fx.paths.sandboxDir(id)).dev, 'upper is not on the host filesystem');
    assert.equal(fs.statSync(path.join(fx.paths.sandboxDir(id), 'disk.img')).size, RESOURCES.diskMb * 1024 * 1024);
    assert.equal(fs.readFileSync(path.join(upper, 'hello'), 'utf8'), 'hi\n');
    const st = fs.statSync(path.join(upper, 'hello'));
    assert.equal(st.uid, ID_BASE);
    assert.equal(st.gid, ID_BASE);
    assert.equal(fs.statSync(path.join(upper, 'var/x')).uid, ID_BASE);
    assert.equal(fs.existsSync(path.join(fx.templateRootfs, 'hello')), false, 'write leaked into the template');

    // the agent dir is mounted read-only
    assert.equal(exec(id, ['ls', '/.capsule/agent']).code, 0);
    assert.notEqual(exec(id, ['sh', '-c', 'echo x > /.capsule/agent']).code, 0, '/.capsule is writable');
    assert.notEqual(exec(id, ['touch', '/.capsule/new']).code, 0, '/.capsule is writable');

    // limits in the host cgroups
    const cg = (ctrl: string, file: string) => fs.readFileSync(path.join('/sys/fs/cgroup', ctrl, 'capsule', id, file), 'utf8').trim();
    assert.equal(cg('memory', 'memory.limit_in_bytes'), String(RESOURCES.memoryMb * 1024 * 1024));
    if (fs.existsSync(path.join('/sys/fs/cgroup/memory/capsule', id, 'memory.memsw.limit_in_bytes'))) {
      assert.equal(cg('memory', 'memory.memsw.limit_in_bytes'), String(RESOURCES.memoryMb * 1024 * 1024));
    }
    assert.equal(cg('pids', 'pids.max'), String(RESOURCES.pids));
    assert.equal(cg('cpu', 'cpu.cfs_quota_us'), '50000');
    assert.equal(cg('cpu', 'cpu.cfs_period_us'), '100000');
    assert.ok(cg('pids', 'cgroup.procs').split('\n').includes(String(info.pid)));

    // the agent socket: host side exists, is a socket, root-only; inside, fd 3 of init is a socket
    const ep = driver.agentEndpoint(id);
    assert.equal(ep.kind, 'unix');
    const sockPath = ep.kind === 'unix' ? ep.path : '';
    assert.equal(sockPath, fx.paths.agentSocket(id));
    assert.ok(fs.statSync(sockPath).isSocket());
    assert.equal(fs.statSync(fx.paths.run).mode & 0o777, 0o700);
    assert.equal(fs.statSync(fx.paths.run).uid, 0);
    assert.match(exec(id, ['ls', '-l', '/proc/1/fd/3']).stdout, /socket:\[\d+\]/);
    assert.notEqual(exec(id, ['ls', fx.paths.run]).code, 0, 'the run dir is visible inside');
    // After the daemon let go of it, the path still reaches the listening socket the sandbox holds.
    await new Promise<void>((resolve, reject) => {
      const c = net.connect(sockPath, () => {
        c.destroy();
        resolve();
      });
      c.on('error', reject);
    });
    // No temp socket names left behind.
    assert.deepEqual(fs.readdirSync(fx.paths.run).filter((n) => n.startsWith('.')), []);

    assert.ok((await driver.listLeftovers()).includes(id));

    await driver.destroy(id);
    made.delete(id);
    await assertNoLeftovers(id);
    assert.ok(!(await driver.listLeftovers()).includes(id));
    await driver.destroy(id); // twice is fine
  });

  test('fork bomb stops at pids.max', async () => {
    const id = 'sbx-pids';
    await create(id);
    // 80 sleepers against a limit of 64: forks past the limit fail, the count stays at the limit.
    const r = exec(id, ['sh', '-c', 'i=0; while [ $i -lt 80 ]; do sleep 30 >/dev/null 2>&1 & i=$((i+1)); done; echo looped']);
    assert.match(r.stderr, /can't fork|Resource temporarily unavailable/, `exit ${r.code}: ${r.stderr}`);
    const current = Number(fs.readFileSync(path.join('/sys/fs/cgroup/pids/capsule', id, 'pids.current'), 'utf8'));
    assert.ok(current <= RESOURCES.pids && current >= RESOURCES.pids - 4, `pids.current=${current} with pids.max=${RESOURCES.pids}`);
    const events = fs.readFileSync(path.join('/sys/fs/cgroup/pids/capsule', id, 'pids.events'), 'utf8');
    assert.match(events, /max [1-9]/);
    await driver.destroy(id);
    made.delete(id);
    await assertNoLeftovers(id);
  });

  test('update changes memory, cpu and pids limits of a running container (warm pool claims)', async () => {
    const id = 'sbx-update';
    await create(id);
    const cg = (ctrl: string, file: string) => fs.readFileSync(path.join('/sys/fs/cgroup', ctrl, 'capsule', id, file), 'utf8').trim();
    const memsw = fs.existsSync(path.join('/sys/fs/cgroup/memory/capsule', id, 'memory.memsw.limit_in_bytes'));
    // Up (memsw must be raised before the limit), then down (the limit lowered before memsw).
    for (const memoryMb of [1024, 64]) {
      await driver.update(id, { memoryMb, cpus: 1.5, pids: 100 });
      assert.equal(cg('memory', 'memory.limit_in_bytes'), String(memoryMb * 1024 * 1024));
      if (memsw) assert.equal(cg('memory', 'memory.memsw.limit_in_bytes'), String(memoryMb * 1024 * 1024));
    }
    assert.equal(cg('cpu', 'cpu.cfs_quota_us'), '150000');
    assert.equal(cg('pids', 'pids.max'), '100');
    await driver.update(id, { pids: 70 });
    assert.equal(cg('pids', 'pids.max'), '70');
    assert.equal(cg('memory', 'memory.limit_in_bytes'), String(64 * 1024 * 1024), 'fields not given stay');
    // The new limit holds: a 100 MiB hog is OOM-killed at 64 MiB.
    const hog = exec(id, ['sh', '-c', 'head -c 100000000 /dev/zero | tail -c 100000000 > /dev/null; echo survived']);
    assert.match(cg('memory', 'memory.oom_control'), /oom_kill [1-9]/, `the hog was not OOM-killed: ${hog.stdout} ${hog.stderr}`);
    assert.ok(Number(cg('memory', 'memory.max_usage_in_bytes')) <= 64 * 1024 * 1024);
    await driver.destroy(id);
    made.delete(id);
    await assertNoLeftovers(id);
  });

  test('destroy of an unknown id and inspect of a missing one are quiet', async () => {
    await driver.destroy('never-existed');
    assert.deepEqual(await driver.inspect('never-existed'), { id: 'never-existed', status: 'missing' });
  });

  test('a bad id is rejected', async () => {
    await assert.rejects(driver.create(specFor('../evil', fx.templateRootfs, RESOURCES)), /invalid sandbox id/);
    await assert.rejects(driver.destroy('a/b'), /invalid sandbox id/);
  });

  test('a failed create cleans up and says why', async () => {
    const id = 'sbx-badtpl';
    await assert.rejects(
      driver.create(specFor(id, path.join(fx.root, 'no-such-template'), RESOURCES)),
      (e: unknown) => isCapsuleError(e) && e.code === 'runtime_error' && /does not exist/.test(e.message),
    );
    await assertNoLeftovers(id);

    // The runtime itself fails (agent binary missing inside): its stderr is in the error.
    const bad = new OciRuntimeDriver({
      runtime: 'crun',
      paths: fx.paths,
      idMapBase: ID_BASE,
      idMapSize: ID_SIZE,
      agentBinary: path.join(fx.paths.bin, 'missing-agent'),
    });
    const id2 = 'sbx-noagent';
    await assert.rejects(
      bad.create(specFor(id2, fx.templateRootfs, RESOURCES)),
      (e: unknown) => isCapsuleError(e) && e.code === 'runtime_error' && /missing-agent|No such file/i.test(e.message),
    );
    await assertNoLeftovers(id2);
  });

  test('an aborted create leaves nothing behind', async () => {
    const id = 'sbx-abort';
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(driver.create(specFor(id, fx.templateRootfs, RESOURCES), ac.signal));
    await assertNoLeftovers(id);
    // Aborts landing at different points of create: either it fails clean, or it finished.
    for (const ms of [1, 5, 15, 30]) {
      const sid = `${id}-${ms}`;
      made.add(sid);
      const ok = await driver.create(specFor(sid, fx.templateRootfs, RESOURCES), AbortSignal.timeout(ms)).then(
        () => true,
        (e: unknown) => {
          assert.ok(isCapsuleError(e) && e.code === 'runtime_error', String(e));
          return false;
        },
      );
      if (ok) await driver.destroy(sid);
      made.delete(sid);
      await assertNoLeftovers(sid);
    }
  });

  test('leftovers are found after a crash (dir + mount without a container)', async () => {
    const id = 'sbx-leftover';
    await create(id);
    // Simulate a crash that lost the runtime's state but kept the overlay and the processes.
    const { pid } = await driver.inspect(id);
    assert.ok(pid);
    fs.rmSync(path.join(fx.paths.runtimeState, id), { recursive: true, force: true });
    assert.ok((await driver.listLeftovers()).includes(id));
    assert.ok(!(await driver.list()).includes(id));
    assert.equal((await driver.inspect(id)).status, 'missing');
    assert.ok(alive(pid), 'the agent still runs');
    await driver.destroy(id);
    made.delete(id);
    await assertNoLeftovers(id);
    assert.ok(!(await driver.listLeftovers()).includes(id));
    assert.ok(!alive(pid), 'the orphaned agent was killed');
  });

  test('create/destroy timing (informational)', async () => {
    const c: number[] = [];
    const d: number[] = [];
    for (let i = 0; i < 10; i++) {
      const id = `sbx-t${i}`;
      let t = performance.now();
      await create(id);
      c.push(performance.now() - t);
      t = performance.now();
      await driver.destroy(id);
      made.delete(id);
      d.push(performance.now() - t);
    }
    console.log(`crun create p50 ${p50(c).toFixed(1)} ms, destroy p50 ${p50(d).toFixed(1)} ms (10 runs)`);
  });
});

const runcSkip = skip ?? (spawnSync('runc', ['--version']).status === 0 ? null : 'runc not installed');
describe('OciRuntimeDriver (runc)', { skip: runcSkip ?? false }, () => {
  test('create, inspect, destroy', async () => {
    await ensureHostReady('runc');
    const fx = makeFixture();
    // The real agent: under runc it binds its own socket (checkpointable, ADR 0018), and create waits until it listens.
    const driver = new OciRuntimeDriver({ runtime: 'runc', paths: fx.paths, idMapBase: ID_BASE, idMapSize: ID_SIZE, agentBinary: AGENT_BUILD_PATH });
    const id = 'sbx-runc';
    try {
      const info = await driver.create(specFor(id, fx.templateRootfs, RESOURCES));
      assert.equal(info.status, 'running');
      const r = spawnSync('runc', ['--root', fx.paths.runtimeState, 'exec', id, 'sh', '-c', 'id -u; hostname; ls -l /proc/1/fd/3; unshare -U true; echo rc=$?'], { encoding: 'utf8' });
      assert.match(r.stdout, /^0\nsbx-runc\n/);
      assert.match(r.stdout, /socket:\[/);
      assert.match(r.stdout, /rc=[1-9]/);
      assert.deepEqual(await driver.list(), [id]);
      let t = performance.now();
      await driver.destroy(id);
      console.log(`runc destroy ${(performance.now() - t).toFixed(1)} ms`);
      t = performance.now();
      await driver.destroy(id);
      assert.equal((await driver.inspect(id)).status, 'missing');
      assert.deepEqual(await driver.listLeftovers(), []);
      for (const m of await cgroupMounts()) assert.equal(fs.existsSync(path.join(m.mountPoint, 'capsule', id)), false);
    } finally {
      await driver.destroy(id).catch(() => {});
      fx.cleanup();
    }
  });
});
