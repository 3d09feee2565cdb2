/**
 * Escape battery, /proc and /sys: what a sandbox can read about the host and
 * what it can write to the kernel's tunables.
 *
 * Under microvm /proc and /sys are the guest kernel's, and the sandbox's root is
 * root of that VM: it reads the guest's kcore, kallsyms and keys and writes the
 * guest's sysctls. None of that is the host's (the host guard checks the host's
 * values after every attack); the VM is the boundary (SECURITY.md).
 */
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { api } from '../helpers/daemon.js';
import { attack, assertDaemonAnswers, createSandbox, probe1, per, sh, sleepMs, forEachIsolation, startBattery, stopBattery, type Battery } from './helpers.js';

let b: Battery;
let id: string;
const B = () => b;

forEachIsolation('security: /proc and /sys', (isolation) => {
  before(async () => {
    b = await startBattery(isolation);
    id = await createSandbox(b, { probes: ['kernel'], envs: { SANDBOX_ONLY: 'visible-inside' } });
  });
  after(async () => {
    await stopBattery(b);
  });

  attack(B, "pid namespace: only the sandbox's own processes exist in /proc; host pids are absent", async () => {
    const r = await sh(b, id, 'ls /proc | grep -E "^[0-9]+$" | sort -n | tr "\\n" " "; echo; cat /proc/1/cmdline | tr "\\0" " "');
    const [pidLine, init] = r.stdout.split('\n');
    const pids = pidLine!.trim().split(' ').map(Number);
    // Under microvm /proc is the guest kernel's: its kernel threads are listed too, and pid 1 is the VM's init.
    if (b.isolation !== 'microvm') assert.ok(pids.length <= 8, `few processes visible: ${pids.join(',')}`);
    assert.ok(Math.max(...pids) < 1000, 'pids are the namespace-local (or guest) ones');
    assert.match(init!, per(b, { container: /capsule-agent/, gvisor: /capsule-agent/, microvm: /^\/init --vm-init/ }), 'pid 1 is the agent (the VM init)');
    if (b.isolation === 'microvm') assert.notEqual((await sh(b, id, 'uname -r')).stdout.trim(), os.release(), 'a guest kernel');
    assert.equal(await probe1(b, id, 'kernel', ['read', `/proc/${b.guard.victimPid}/cmdline`]), 'ENOENT');
    assert.equal(await probe1(b, id, 'kernel', ['read', `/proc/${process.pid}/environ`]), 'ENOENT');
  });

  attack(B, "the daemon's and the host's environment never appear in the sandbox", async () => {
    const r = await sh(b, id, 'cat /proc/*/environ 2>/dev/null | tr "\\0" "\\n"');
    assert.match(r.stdout, /SANDBOX_ONLY=visible-inside/, 'the sandbox sees its own envs');
    assert.ok(!r.stdout.includes(b.daemonCanary), "the daemon's environment leaked into the sandbox");
    assert.doesNotMatch(r.stdout, /CAPSULE_TEMPLATE_CACHE|CAPSULE_LOG_LEVEL/);
  });

  attack(B, '/proc/kcore: absent (kernel without it) or masked to 0 bytes', async () => {
    const r = await probe1(b, id, 'kernel', ['read', '/proc/kcore']);
    // Under microvm it is the guest kernel's memory (that VM's only), readable by the VM's root.
    if (b.isolation === 'microvm') assert.match(r, /^(ENOENT|OK \d+)$/, `/proc/kcore gave ${r}`);
    else assert.ok(r === 'ENOENT' || r === 'OK 0', `/proc/kcore gave ${r}`);
  });

  attack(B, '/proc/keys, /proc/timer_list, /proc/sched_debug, /proc/latency_stats, /proc/timer_stats: masked or absent', async () => {
    if (b.isolation === 'microvm') {
      // The guest kernel's files (its keyrings, its timers), readable by the VM's root; nothing of the host's.
      const r = await probe1(b, id, 'kernel', ['read', '/proc/timer_list']);
      assert.match(r, /^(ENOENT|OK \d+)$/);
      return;
    }
    for (const p of ['/proc/keys', '/proc/timer_list', '/proc/sched_debug', '/proc/latency_stats', '/proc/timer_stats']) {
      // gVisor's kernel has its own /proc, without these files.
      const hostHas = fs.existsSync(p) && b.isolation === 'container';
      const r = await probe1(b, id, 'kernel', ['read', p]);
      if (hostHas) assert.ok(r === 'OK 0' || r === 'EACCES', `${p} is readable inside: ${r}`);
      else assert.equal(r, 'ENOENT', p);
    }
    // /proc/acpi and /proc/scsi become empty dirs when present.
    const acpi = await sh(b, id, 'ls -A /proc/acpi /proc/scsi 2>/dev/null | grep -v ":$" | grep -c . || true');
    assert.equal(acpi.stdout.trim(), '0');
  });

  attack(B, '/proc/kallsyms: symbol addresses are all zero (absent under gVisor)', async () => {
    if (b.isolation === 'gvisor') {
      assert.equal(await probe1(b, id, 'kernel', ['read', '/proc/kallsyms']), 'ENOENT', "gVisor's kernel has no symbol table to leak");
      return;
    }
    if (b.isolation === 'microvm') {
      // The VM's root reads the guest kernel's real addresses: that defeats KASLR of the guest kernel only,
      // which is the VM's own business (it runs nothing but this sandbox). The host's kallsyms is out of reach.
      const r = await sh(b, id, 'grep -c " T " /proc/kallsyms');
      assert.ok(Number(r.stdout.trim()) > 0);
      return;
    }
    const r = await sh(b, id, 'head -n 2000 /proc/kallsyms | cut -d" " -f1 | sort -u');
    const addrs = r.stdout.split('\n').filter(Boolean);
    assert.ok(addrs.length >= 1);
    assert.deepEqual(addrs, ['0000000000000000'], 'kernel addresses leak (KASLR bypass)');
  });

  attack(B, '/proc/sys: writes (core_pattern, hostname, ip_forward, panic, drop_caches) are refused; host values unchanged', async () => {
    const writes: Array<[string, string]> = [
      ['/proc/sys/kernel/core_pattern', '|/tmp/pwn %p'],
      ['/proc/sys/kernel/hostname', 'pwned-host'],
      ['/proc/sys/kernel/panic', '1'],
      ['/proc/sys/net/ipv4/ip_forward', '1'],
      ['/proc/sys/vm/drop_caches', '3'],
      ['/proc/sys/kernel/randomize_va_space', '0'],
    ];
    for (const [p, v] of writes) {
      const r = await probe1(b, id, 'kernel', ['write', p, v]);
      // gVisor's network stack is its own: its ip_forward is a setting of that stack (loopback only), not the host's.
      if (b.isolation === 'gvisor' && p.endsWith('ip_forward') && r === 'OK') continue;
      // gVisor's /proc/sys has only a few of these, refused with EIO; the rest are absent (ENOENT). None is the host's.
      // Under microvm the writes succeed: they set the guest kernel's tunables (host values: checked by the guard).
      const refused = per(b, { container: ['EROFS', 'EACCES', 'EPERM'], gvisor: ['EROFS', 'EACCES', 'EPERM', 'ENOENT', 'EIO'], microvm: ['OK'] });
      assert.ok(refused.includes(r), `write ${p}: ${r}`);
    }
    const sh1 = await sh(b, id, 'echo "|/tmp/pwn" > /proc/sys/kernel/core_pattern; echo rc=$?');
    if (b.isolation === 'microvm') assert.match(sh1.stdout, /rc=0/, "the guest's core_pattern");
    else assert.doesNotMatch(sh1.stdout, /rc=0/);
  });

  attack(B, '/proc/sysrq-trigger and /proc/sys/kernel/sysrq cannot be written', async () => {
    if (b.isolation === 'microvm') {
      // The VM's root can reboot its own VM (sysrq b). QEMU exits (no reboot), and the sandbox is failed: it
      // kills only itself, like a container killing its own init. The daemon and other sandboxes carry on.
      // A throwaway VM, so that the rest of this file keeps its sandbox.
      const victim = await createSandbox(b, { probes: ['kernel'] });
      await sh(b, victim, 'echo b > /proc/sysrq-trigger', { background: true, timeoutMs: 10_000 }).catch(() => undefined);
      let state = '';
      for (let i = 0; i < 100 && state !== 'failed' && state !== 'killed'; i++) {
        await sleepMs(100);
        state = String((await api(b.url, 'GET', `/v1/sandboxes/${victim}`)).json?.state ?? '');
      }
      assert.ok(state === 'failed' || state === 'killed', `the rebooted VM's sandbox is ${state}`);
      await assertDaemonAnswers(b);
      assert.equal((await sh(b, id, 'echo alive')).stdout, 'alive\n');
      return;
    }
    const r = await probe1(b, id, 'kernel', ['write', '/proc/sysrq-trigger', 'b']);
    if (fs.existsSync('/proc/sysrq-trigger')) assert.ok(['EROFS', 'EACCES', 'EPERM'].includes(r), `sysrq-trigger: ${r}`);
    else assert.equal(r, 'ENOENT');
    const s = await probe1(b, id, 'kernel', ['write', '/proc/sys/kernel/sysrq', '1']);
    assert.ok(['EROFS', 'EACCES', 'EPERM', 'ENOENT'].includes(s), `sysrq: ${s}`);
  });

  attack(B, '/sys is read-only: uevent_helper, THP, lo mtu, cgroup files cannot be written', async () => {
    const targets: Array<[string, string]> = [
      ['/sys/kernel/uevent_helper', '/tmp/pwn'],
      ['/sys/kernel/mm/transparent_hugepage/enabled', 'never'],
      ['/sys/class/net/lo/mtu', '1280'],
      ['/sys/fs/cgroup/memory/memory.limit_in_bytes', '-1'],
      ['/sys/fs/cgroup/pids/pids.max', 'max'],
      ['/sys/power/state', 'mem'],
    ];
    if (b.isolation === 'microvm') {
      // The guest's /sys is read-write for the VM's root: THP and lo's mtu are the guest kernel's settings.
      // /sys/power/state is left out (it would suspend the VM). The host's values: checked by the guard.
      for (const [p, v] of targets.filter(([p]) => !p.startsWith('/sys/power'))) {
        const r = await probe1(b, id, 'kernel', ['write', p, v]);
        assert.ok(['OK', 'EROFS', 'EACCES', 'EPERM', 'ENOENT', 'EINVAL'].includes(r), `write ${p}: ${r}`);
      }
      const touch = await sh(b, id, 'touch /sys/pwn; echo rc=$?');
      assert.doesNotMatch(touch.stdout, /rc=0/);
      return;
    }
    for (const [p, v] of targets) {
      const r = await probe1(b, id, 'kernel', ['write', p, v]);
      assert.ok(['EROFS', 'EACCES', 'EPERM', 'ENOENT'].includes(r), `write ${p}: ${r}`);
    }
    const mi = await sh(b, id, 'grep " /sys " /proc/self/mountinfo');
    assert.match(mi.stdout, / \/sys ro,/, '/sys is mounted read-only');
    const touch = await sh(b, id, 'touch /sys/pwn; echo rc=$?');
    assert.doesNotMatch(touch.stdout, /rc=0/);
  });

  attack(B, '/sys/firmware and /sys/dev/block are masked (empty)', async () => {
    if (b.isolation === 'microvm') {
      // The guest's: QEMU's ACPI tables and memory map, and its two virtio-blk disks. Nothing about the host.
      const r = await sh(b, id, 'ls /sys/dev/block');
      assert.equal(r.stdout.split('\n').filter(Boolean).length, 2, `the VM's two disks: ${r.stdout}`);
      return;
    }
    const r = await sh(b, id, 'ls -A /sys/firmware /sys/dev/block 2>/dev/null | grep -v ":$" | grep -c . || true');
    assert.equal(r.stdout.trim(), '0');
  });

  attack(B, "mount table: the sandbox sees only its own mounts, none of the host's", async () => {
    const inside = (await sh(b, id, 'cut -d" " -f5 /proc/self/mountinfo')).stdout.split('\n').filter(Boolean);
    // Under gVisor also the agent's socket dir (gVisor's own bind mount of a host dir made for it).
    // Under microvm the guest's own mounts (its overlay root, /proc, /sys, /dev, its cgroup2).
    const expected = per(b, {
      container: /^\/(proc|dev|sys|\.capsule)?(\/|$)/,
      gvisor: /^\/(proc|dev|sys|\.capsule|\.capsule-sock)?(\/|$)/,
      microvm: /^\/(proc|dev|sys)?(\/|$)/,
    });
    for (const m of inside) assert.match(m, expected, `unexpected mount ${m}`);
    // No host mount point other than / itself (e.g. /sys/fs/cgroup/*, the data dir) shows up.
    const hostOnly = fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4])
      .filter((m): m is string => !!m && m.startsWith('/sys/fs/cgroup'));
    if (b.isolation === 'microvm') {
      // The guest mounts its own cgroup2 at /sys/fs/cgroup (for the pids limit): not the host's hierarchy,
      // which has the daemon's capsule/ subtree.
      const ls = await sh(b, id, 'ls /sys/fs/cgroup');
      assert.doesNotMatch(ls.stdout, /^capsule$/m, "the host's cgroup tree is visible inside");
      assert.match(ls.stdout, /^sandbox$/m);
      return;
    }
    for (const m of hostOnly) assert.ok(!inside.includes(m), `host mount ${m} visible inside`);
  });

  attack(B, 'cgroup namespace: /proc/self/cgroup shows only the root, not the host hierarchy', async () => {
    const r = await sh(b, id, 'cat /proc/self/cgroup');
    if (b.isolation === 'microvm') {
      // The guest's own hierarchy: commands run in its /sandbox cgroup (the pids limit, which the VM's root
      // may lift: it bounds only that VM's processes, whose memory and CPU the VM's size bounds anyway).
      assert.equal(r.stdout, '0::/sandbox\n');
      return;
    }
    for (const line of r.stdout.split('\n').filter(Boolean)) {
      assert.match(line, /:\/$/, `cgroup path leaks: ${line}`);
    }
  });
}, { microvm: true });
