/**
 * Escape battery, /proc and /sys: what a sandbox can read about the host and
 * what it can write to the kernel's tunables.
 */
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { attack, createSandbox, probe1, per, sh, forEachIsolation, startBattery, stopBattery, type Battery } from './helpers.js';

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
    assert.ok(pids.length <= 8, `few processes visible: ${pids.join(',')}`);
    assert.ok(Math.max(...pids) < 1000, 'pids are the namespace-local ones');
    assert.match(init!, /capsule-agent/, 'pid 1 is the agent');
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
    assert.ok(r === 'ENOENT' || r === 'OK 0', `/proc/kcore gave ${r}`);
  });

  attack(B, '/proc/keys, /proc/timer_list, /proc/sched_debug, /proc/latency_stats, /proc/timer_stats: masked or absent', async () => {
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
      const refused = per(b, { container: ['EROFS', 'EACCES', 'EPERM'], gvisor: ['EROFS', 'EACCES', 'EPERM', 'ENOENT', 'EIO'] });
      assert.ok(refused.includes(r), `write ${p}: ${r}`);
    }
    const sh1 = await sh(b, id, 'echo "|/tmp/pwn" > /proc/sys/kernel/core_pattern; echo rc=$?');
    assert.doesNotMatch(sh1.stdout, /rc=0/);
  });

  attack(B, '/proc/sysrq-trigger and /proc/sys/kernel/sysrq cannot be written', async () => {
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
    const r = await sh(b, id, 'ls -A /sys/firmware /sys/dev/block 2>/dev/null | grep -v ":$" | grep -c . || true');
    assert.equal(r.stdout.trim(), '0');
  });

  attack(B, "mount table: the sandbox sees only its own mounts, none of the host's", async () => {
    const inside = (await sh(b, id, 'cut -d" " -f5 /proc/self/mountinfo')).stdout.split('\n').filter(Boolean);
    // Under gVisor also the agent's socket dir (gVisor's own bind mount of a host dir made for it).
    const expected = per(b, { container: /^\/(proc|dev|sys|\.capsule)?(\/|$)/, gvisor: /^\/(proc|dev|sys|\.capsule|\.capsule-sock)?(\/|$)/ });
    for (const m of inside) assert.match(m, expected, `unexpected mount ${m}`);
    // No host mount point other than / itself (e.g. /sys/fs/cgroup/*, the data dir) shows up.
    const hostOnly = fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4])
      .filter((m): m is string => !!m && m.startsWith('/sys/fs/cgroup'));
    for (const m of hostOnly) assert.ok(!inside.includes(m), `host mount ${m} visible inside`);
  });

  attack(B, 'cgroup namespace: /proc/self/cgroup shows only the root, not the host hierarchy', async () => {
    const r = await sh(b, id, 'cat /proc/self/cgroup');
    for (const line of r.stdout.split('\n').filter(Boolean)) {
      assert.match(line, /:\/$/, `cgroup path leaks: ${line}`);
    }
  });
});
