/**
 * Abuse battery, resources: fork bombs, memory hogs, open files, inodes and
 * tmpfs space, CPU. Each must stop at the sandbox's own limits while the
 * daemon keeps answering and, where the limit is recoverable, the sandbox
 * stays usable afterwards.
 */
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { api } from '../helpers/daemon.js';
import { gvisorHostTasks } from '../../src/runtime/gvisor/bundle.js';
import { QEMU_HOST_TASKS } from '../../src/runtime/microvm/driver.js';
import { settledLeftovers } from '../helpers/leftovers.js';
import {
  assertDaemonAnswers,
  assertSandboxUsable,
  attack,
  createSandbox,
  per,
  probe,
  sandboxHostPids,
  sh,
  forEachIsolation,
  startBattery,
  stopBattery,
  type Battery,
} from './helpers.js';

let b: Battery;
let id: string;
const B = () => b;
const PIDS = 64;
const MEMORY_MB = 64;
/**
 * gVisor on the ptrace platform spends ~0.8 MiB of host memory (a stub process) per guest process in the
 * sandbox's memory cgroup: with 64 MiB a fork bomb would exhaust memory (which ends the whole sandbox, see
 * the memory hog) before the pids limit. The battery sandbox gets room for PIDS processes.
 */
const GVISOR_MEMORY_MB = 256;

/** Under gVisor, exhausting memory ends the whole sandbox (the host's OOM killer picks gVisor's kernel process). */
async function assertSandboxEnded(b: Battery, sid: string): Promise<void> {
  let rec: { state: string; endReason?: string } = { state: 'running' };
  for (let i = 0; i < 100 && rec.state === 'running'; i++) {
    rec = (await api(b.url, 'GET', `/v1/sandboxes/${sid}`)).json;
    if (rec.state === 'running') await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(rec.state, 'failed', JSON.stringify(rec));
  assert.match(rec.endReason ?? '', /init process died/);
}

function cgroupValue(controller: string, id: string, file: string): string | null {
  try {
    return fs.readFileSync(`/sys/fs/cgroup/${controller}/capsule/${id}/${file}`, 'utf8').trim();
  } catch {
    return null;
  }
}

/**
 * A microVM's memory is its guest's RAM: the guest kernel and the VM's init need some of it, so the battery
 * VM gets 128 MiB (the memory hog then asks for 4x its size).
 */
const MICROVM_MEMORY_MB = 128;

function memoryMb(b: Battery): number {
  return per(b, { container: MEMORY_MB, gvisor: GVISOR_MEMORY_MB, microvm: MICROVM_MEMORY_MB });
}

/** The throwaway sandboxes' memory: MEMORY_MB, but a microVM below 128 MiB does not boot. */
function smallMb(b: Battery): number {
  return b.isolation === 'microvm' ? MICROVM_MEMORY_MB : MEMORY_MB;
}

forEachIsolation('security: resource exhaustion', (isolation) => {
  before(async () => {
    b = await startBattery(isolation);
    id = await createSandbox(b, { probes: ['res', 'procs'], resources: { pids: PIDS, memoryMb: memoryMb(b), cpus: 0.5 } });
  });
  after(async () => {
    await stopBattery(b);
  });

  attack(B, 'fork bomb (C): capped by pids.max with EAGAIN; daemon answers meanwhile; sandbox usable afterwards', async () => {
    const during = api(b.url, 'GET', '/v1/sandboxes');
    const lines = await probe(b, id, 'res', ['forkbomb']);
    const m = /^forked=(\d+) err=(\w+)$/.exec(lines[0] ?? '');
    assert.ok(m, lines.join('\n'));
    assert.ok(Number(m[1]) < PIDS, `forked ${m[1]} processes with pids.max ${PIDS}`);
    assert.ok(Number(m[1]) > PIDS / 2, 'the limit, not something else, stopped it');
    assert.equal(m[2], 'EAGAIN');
    assert.equal((await during).status, 200);
    await assertSandboxUsable(b, id);
    // Under gVisor the limit is RLIMIT_NPROC inside its kernel; the host cgroup only bounds gVisor's own tasks.
    // Under microvm it is a pids cgroup inside the guest; the host cgroup caps QEMU's threads (a fixed number).
    const max = cgroupValue('pids', id, 'pids.max');
    if (max !== null) assert.equal(max, String(per(b, { container: PIDS, gvisor: gvisorHostTasks(PIDS), microvm: QEMU_HOST_TASKS })));
    if (b.isolation === 'microvm') assert.equal(sandboxHostPids(id).length, 1, 'on the host the bomb is QEMU alone');
  });

  attack(B, 'fork bomb (shell): stops at the pids limit, is killed with its command, sandbox usable afterwards', async () => {
    // The command's shell forks exactly once (`bomb &`, before any bomb process exists) and then execs
    // `sleep`. Calling `bomb` in the foreground would make the shell fork both sides of `bomb | bomb &`
    // itself, and the second fork races the first side's bomb for the last pids: the shell then dies with
    // "can't fork" (exit 2) before the timeout (seen in CI). So the timeout's SIGKILL to the command's
    // process group is what ends whatever the bomb still has running.
    const r = await sh(b, id, 'bomb() { bomb | bomb & }; bomb 2>/dev/null & exec sleep 30', { timeoutMs: 3000 });
    if (b.isolation === 'gvisor') {
      // gVisor's kernel lets a process forked while the group kill is being delivered escape it (Linux does not):
      // the bomb goes on, held to `pids` processes by RLIMIT_NPROC, until the sandbox is killed. Killing it
      // removes everything; the next attacks get a fresh sandbox.
      await assertDaemonAnswers(b);
      const k = await api(b.url, 'DELETE', `/v1/sandboxes/${id}`);
      assert.equal(k.json.state, 'killed', k.text);
      assert.deepEqual(await settledLeftovers(id, b.d.dataDir), []);
      id = await createSandbox(b, { probes: ['res', 'procs'], resources: { pids: PIDS, memoryMb: GVISOR_MEMORY_MB, cpus: 0.5 } });
      return;
    }
    assert.equal(r.timedOut, true, JSON.stringify(r));
    await assertDaemonAnswers(b);
    await assertSandboxUsable(b, id);
    // Under gVisor the host cgroup holds gVisor's own tasks, under microvm QEMU: count the sandbox's processes
    // inside instead (under microvm: the guest's /sandbox cgroup, without the guest kernel's threads).
    const count = async () =>
      b.isolation === 'gvisor'
        ? Number((await sh(b, id, 'ls /proc | grep -c "^[0-9]"')).stdout.trim())
        : b.isolation === 'microvm'
          ? Number((await sh(b, id, 'wc -l < /sys/fs/cgroup/sandbox/cgroup.procs')).stdout.trim())
          : sandboxHostPids(id).length;
    let left = await count();
    for (let i = 0; i < 40 && left >= 8; i++) {
      await new Promise((res) => setTimeout(res, 50)); // killed processes take a moment to be reaped
      left = await count();
    }
    assert.ok(left < 8, `${left} processes left in the sandbox after the bomb`);
  });

  attack(B, 'memory hog: OOM-killed inside its own cgroup (exit 137); daemon fine; sandbox usable (gVisor: the sandbox ends)', async () => {
    if (b.isolation === 'gvisor') {
      // The hog's memory is gVisor's (its kernel maps it), so the host's OOM killer takes gVisor's kernel process:
      // the whole sandbox ends, and only it. The daemon and other sandboxes go on.
      const victim = await createSandbox(b, { probes: ['res'], resources: { pids: PIDS, memoryMb: MEMORY_MB } });
      const r = await api(b.url, 'POST', `/v1/sandboxes/${victim}/commands`, { cmd: ['/probes/res', 'memhog', String(MEMORY_MB * 4)], timeoutMs: 30_000 });
      assert.ok(r.status !== 200 || r.json.exitCode !== 0, r.text);
      await assertSandboxEnded(b, victim);
      await assertDaemonAnswers(b);
      await assertSandboxUsable(b, id);
      return;
    }
    const r = await sh(b, id, ['/probes/res', 'memhog', String(MEMORY_MB * 4)], { timeoutMs: 30_000 });
    assert.equal(r.exitCode, 137, `${r.stdout.slice(-200)} ${r.stderr}`);
    assert.equal(r.signal, 'SIGKILL');
    assert.doesNotMatch(r.stdout, /without being stopped/);
    const last = Number(r.stdout.trim().split('\n').pop());
    assert.ok(last < MEMORY_MB * 1.5, `got to ${last} MiB with a ${MEMORY_MB} MiB limit`);
    // Under microvm the guest's OOM killer ends the hog inside the VM; the host cgroup (QEMU, guest RAM + headroom)
    // is never reached, and QEMU lives on (the sandbox stays usable).
    const peak = cgroupValue('memory', id, 'memory.max_usage_in_bytes');
    if (peak !== null) assert.ok(Number(peak) >= MEMORY_MB * 1024 * 1024 * 0.9, `the memcg limit was reached (peak ${peak})`);
    await assertDaemonAnswers(b);
    await assertSandboxUsable(b, id);
  });

  attack(B, 'open files: RLIMIT_NOFILE holds (soft 1024, hard 4096, raising the hard limit EPERM); daemon answers', async () => {
    const lines = await probe(b, id, 'res', ['nofile']);
    assert.match(lines[0]!, /^soft=1024 hard=4096 opened=10\d\d err=EMFILE$/);
    assert.match(lines[1]!, /^raised opened=40\d\d err=EMFILE$/);
    // The VM's root holds CAP_SYS_RESOURCE in its own kernel: it may raise its hard limit. Open files are then
    // bounded by the guest's memory (the VM's size), not by the host's file table: QEMU's fds do not grow.
    assert.equal(lines[2], per(b, { container: 'raise-hard=EPERM', gvisor: 'raise-hard=EPERM', microvm: 'raise-hard=OK' }));
    await assertDaemonAnswers(b);
  });

  attack(B, 'inodes: creating files in /dev/shm stops at the tmpfs inode limit; the sandbox (and its agent) survive (gVisor: the sandbox ends)', async () => {
    // A fresh sandbox: before the fix this killed the agent, and later tests need a live one.
    const id = await createSandbox(b, { probes: ['res'], resources: { pids: PIDS, memoryMb: smallMb(b) } });
    if (b.isolation === 'gvisor') {
      // gVisor's tmpfs has no inode limit: the files fill memory, which ends the sandbox (as the memory hog).
      await api(b.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: '/probes/res fill-files /dev/shm 2000000', timeoutMs: 60_000 });
      await assertSandboxEnded(b, id);
      await assertDaemonAnswers(b);
      return;
    }
    const r = await sh(b, id, '/probes/res fill-files /dev/shm 2000000', { timeoutMs: 60_000 });
    assert.equal(r.exitCode, 0, `the filler was killed (${r.signal}): the tmpfs inodes pinned the memcg`);
    const m = /^files=(\d+) err=(\w+)$/m.exec(r.stdout);
    assert.ok(m, r.stdout);
    assert.equal(m[2], 'ENOSPC', 'stopped by the tmpfs inode limit');
    await assertDaemonAnswers(b);
    await assertSandboxUsable(b, id);
    const rm = await sh(b, id, 'rm -rf /dev/shm/*; ls /dev/shm | wc -l');
    assert.equal(rm.stdout.trim(), '0');
  });

  attack(B, 'tmpfs space: /dev/shm and /dev fill up with ENOSPC below the memory limit; the sandbox survives', async () => {
    const id = await createSandbox(b, { probes: ['res'], resources: { pids: PIDS, memoryMb: smallMb(b) } });
    // gVisor sizes /dev/shm as asked, but makes /dev its own, unbounded: filling it ends the sandbox (as the memory hog).
    // Under microvm both are the guest's tmpfs/devtmpfs, bounded inside the VM's own RAM.
    for (const target of per(b, { container: ['/dev/shm/fill', '/dev/fill'], gvisor: ['/dev/shm/fill'], microvm: ['/dev/shm/fill', '/dev/fill'] })) {
      const r = await sh(b, id, `/probes/res fill-bytes ${target} 1024`, { timeoutMs: 60_000 });
      assert.equal(r.exitCode, 0, `${target}: the filler was killed (${r.signal}): tmpfs pages pinned the memcg`);
      const m = /^mib=(\d+) err=(\w+)$/m.exec(r.stdout);
      assert.ok(m, r.stdout);
      assert.equal(m[2], 'ENOSPC', target);
      assert.ok(Number(m[1]) < smallMb(b), `${target}: ${m[1]} MiB with a ${smallMb(b)} MiB memory limit`);
      await assertSandboxUsable(b, id);
      await sh(b, id, `rm -f ${target}`);
    }
    if (b.isolation === 'gvisor') {
      await api(b.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: '/probes/res fill-bytes /dev/fill 1024', timeoutMs: 60_000 });
      await assertSandboxEnded(b, id);
    }
    await assertDaemonAnswers(b);
  });

  attack(B, 'CPU: two busy processes get about the 0.5-CPU quota, not the whole host', async () => {
    const before = cgroupValue('cpuacct', id, 'cpuacct.usage') ?? cgroupValue('cpu,cpuacct', id, 'cpuacct.usage');
    const t0 = performance.now();
    const r = await sh(b, id, '/probes/res spin 2 1.5', { timeoutMs: 20_000 });
    const wall = (performance.now() - t0) / 1000;
    assert.equal(r.stdout, 'OK\n');
    const after = cgroupValue('cpuacct', id, 'cpuacct.usage') ?? cgroupValue('cpu,cpuacct', id, 'cpuacct.usage');
    if (before !== null && after !== null) {
      const used = (Number(after) - Number(before)) / 1e9;
      assert.ok(used < wall * 0.5 * 1.4 + 0.1, `used ${used.toFixed(2)} s CPU in ${wall.toFixed(2)} s wall with a 0.5 CPU quota`);
    }
    await assertDaemonAnswers(b);
  });
}, { microvm: true });
