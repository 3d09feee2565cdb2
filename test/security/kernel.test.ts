/**
 * Escape battery, kernel surface: mounts, namespaces, modules, the syscalls the
 * seccomp filter must stop, devices, clocks, hostnames and credentials. Each
 * attack runs inside a real busybox sandbox; afterwards the host must be unchanged.
 */
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { api } from '../helpers/daemon.js';
import { SANDBOX_CAPABILITIES } from '../../src/runtime/bundle.js';
import {
  attack,
  createSandbox,
  probe,
  probe1,
  sandboxHostPids,
  per,
  sh,
  forEachIsolation,
  startBattery,
  stopBattery,
  type Battery,
} from './helpers.js';

let b: Battery;
let id: string;
const B = () => b;

/** Linux capability numbers, for decoding CapBnd. */
const CAP_NUMBERS: Record<string, number> = {
  CAP_CHOWN: 0, CAP_DAC_OVERRIDE: 1, CAP_DAC_READ_SEARCH: 2, CAP_FOWNER: 3, CAP_FSETID: 4, CAP_KILL: 5,
  CAP_SETGID: 6, CAP_SETUID: 7, CAP_SETPCAP: 8, CAP_LINUX_IMMUTABLE: 9, CAP_NET_BIND_SERVICE: 10,
  CAP_NET_BROADCAST: 11, CAP_NET_ADMIN: 12, CAP_NET_RAW: 13, CAP_IPC_LOCK: 14, CAP_IPC_OWNER: 15,
  CAP_SYS_MODULE: 16, CAP_SYS_RAWIO: 17, CAP_SYS_CHROOT: 18, CAP_SYS_PTRACE: 19, CAP_SYS_PACCT: 20,
  CAP_SYS_ADMIN: 21, CAP_SYS_BOOT: 22, CAP_SYS_NICE: 23, CAP_SYS_RESOURCE: 24, CAP_SYS_TIME: 25,
  CAP_SYS_TTY_CONFIG: 26, CAP_MKNOD: 27, CAP_LEASE: 28, CAP_AUDIT_WRITE: 29, CAP_AUDIT_CONTROL: 30,
  CAP_SETFCAP: 31, CAP_MAC_OVERRIDE: 32, CAP_MAC_ADMIN: 33, CAP_SYSLOG: 34, CAP_WAKE_ALARM: 35,
  CAP_BLOCK_SUSPEND: 36, CAP_AUDIT_READ: 37, CAP_PERFMON: 38, CAP_BPF: 39, CAP_CHECKPOINT_RESTORE: 40,
};

forEachIsolation('security: kernel surface', (isolation) => {
  if (isolation === 'microvm') {
    guestRootAttacks();
    return;
  }
  before(async () => {
    b = await startBattery(isolation);
    id = await createSandbox(b, { probes: ['kernel', 'procs'] });
    await sh(b, id, 'mkdir -p /tmp/m /tmp/old');
  });
  after(async () => {
    await stopBattery(b);
  });

  attack(B, 'mount: tmpfs, proc and a bind of / are refused (no CAP_SYS_ADMIN)', async () => {
    assert.equal(await probe1(b, id, 'kernel', ['mount-tmpfs', '/tmp/m']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['mount-proc', '/tmp/m']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['mount-bind', '/', '/tmp/m']), 'EPERM');
    // The new mount API too (gVisor's kernel does not have it).
    const newApi = per(b, { container: 'EPERM', gvisor: 'ENOSYS' });
    assert.equal(await probe1(b, id, 'kernel', ['fsopen', 'tmpfs']), newApi);
    assert.equal(await probe1(b, id, 'kernel', ['open-tree', '/']), newApi);
    const bb = await sh(b, id, 'mount -t tmpfs none /tmp/m; echo rc=$?; grep -c " /tmp/m " /proc/self/mountinfo');
    assert.match(bb.stdout, /rc=[1-9]/);
    assert.match(bb.stdout, /^0$/m, 'nothing got mounted on /tmp/m');
  });

  attack(B, 'umount: masked and read-only paths cannot be unmounted or remounted rw', async () => {
    for (const p of ['/proc/keys', '/proc/sys', '/proc/timer_list', '/sys/firmware', '/']) {
      assert.equal(await probe1(b, id, 'kernel', ['umount', p]), 'EPERM', `umount ${p}`);
    }
    assert.equal(await probe1(b, id, 'kernel', ['remount-rw', '/sys']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['remount-rw', '/proc/sys']), 'EPERM');
    const bb = await sh(b, id, 'umount /proc/keys; echo rc=$?; wc -c < /proc/keys');
    assert.match(bb.stdout, /rc=[1-9]/);
    if (b.isolation === 'gvisor') assert.match(bb.stderr, /no such file/i, "gVisor's /proc has no keys file");
    else assert.match(bb.stdout, /^0$/m, '/proc/keys is still masked');
  });

  attack(B, 'pivot_root is refused', async () => {
    assert.equal(await probe1(b, id, 'kernel', ['pivot-root', '/tmp', '/tmp/old']), 'EPERM');
    assert.equal((await sh(b, id, 'pivot_root /tmp /tmp/old; echo rc=$?')).stdout.trim().startsWith('rc=0'), false);
  });

  attack(B, 'chroot double escape (CAP_SYS_CHROOT is granted) only reaches the sandbox root', async () => {
    const lines = await probe(b, id, 'kernel', ['chroot-escape', '/etc/hostname']);
    assert.deepEqual(lines.slice(0, 2), ['OK', 'OK'], 'both chroots run');
    assert.equal(lines[2], 'read /etc/hostname: capsule', "the 'escaped' root is the sandbox's own (busybox template /etc/hostname)");
    const marker = await probe(b, id, 'kernel', ['chroot-escape', b.guard.markerPath]);
    assert.equal(marker[2], `open ${b.guard.markerPath}: ENOENT`, 'host files stay out of reach');
  });

  attack(B, 'unshare: every namespace type is refused by the filter (no nested userns to regain caps)', async () => {
    for (const ns of ['user', 'mount', 'net', 'pid', 'uts', 'ipc', 'cgroup', 'time']) {
      assert.equal(await probe1(b, id, 'kernel', ['unshare', ns]), 'EPERM', `unshare(${ns})`);
    }
    const bb = await sh(b, id, 'unshare -r id -u; echo rc=$?');
    assert.doesNotMatch(bb.stdout, /rc=0/);
  });

  attack(B, 'clone with namespace flags is EPERM, clone3 is ENOSYS, plain fork still works', async () => {
    for (const ns of ['user', 'mount', 'net', 'pid', 'uts', 'ipc', 'cgroup']) {
      assert.equal(await probe1(b, id, 'kernel', ['clone', ns]), 'EPERM', `clone(CLONE_NEW${ns})`);
    }
    // Under gVisor the filter lets clone3 through (runsc would make its ENOSYS an EPERM, and glibc could start
    // no thread: gvisor/bundle.ts gvisorSeccomp); gVisor's kernel does not implement it. If a runsc release
    // does, namespace flags would pass where the filter cannot see them: this fails first.
    assert.equal(await probe1(b, id, 'kernel', ['clone3', 'user']), 'ENOSYS');
    assert.equal(await probe1(b, id, 'kernel', ['clone3']), 'ENOSYS');
    assert.equal(await probe1(b, id, 'kernel', ['fork']), 'OK');
  });

  attack(B, 'setns into namespace files is refused', async () => {
    for (const ns of ['user', 'mnt', 'net', 'pid', 'uts', 'cgroup']) {
      // gVisor's /proc/<pid>/ns has only some entries (no mnt, uts, ...): the others are ENOENT.
      const got = await probe1(b, id, 'kernel', ['setns', `/proc/1/ns/${ns}`]);
      assert.ok(per(b, { container: ['EPERM'], gvisor: ['EPERM', 'ENOENT'] }).includes(got), `setns ${ns}: ${got}`);
    }
    // The host's namespaces are not even nameable: host pids do not exist here.
    assert.equal(await probe1(b, id, 'kernel', ['setns', `/proc/${b.guard.victimPid}/ns/mnt`]), 'ENOENT');
  });

  attack(B, 'kernel modules: init_module, finit_module and delete_module are refused', async () => {
    assert.equal(await probe1(b, id, 'kernel', ['init-module']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['finit-module']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['delete-module', 'ext4']), 'EPERM');
    const bb = await sh(b, id, 'insmod /probes/kernel; echo rc=$?; modprobe dummy; echo rc=$?');
    assert.doesNotMatch(bb.stdout, /rc=0/);
  });

  attack(B, 'kexec_load, kexec_file_load and reboot are refused', async () => {
    assert.equal(await probe1(b, id, 'kernel', ['kexec-load']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['kexec-file-load']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['reboot']), 'EPERM');
  });

  attack(B, 'keyrings: keyctl, add_key and request_key are blocked', async () => {
    assert.equal(await probe1(b, id, 'kernel', ['keyctl']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['add-key']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['request-key']), 'EPERM');
  });

  attack(B, 'bpf is blocked', async () => {
    assert.equal(await probe1(b, id, 'kernel', ['bpf']), 'EPERM');
  });

  attack(B, 'perf_event_open is blocked', async () => {
    assert.equal(await probe1(b, id, 'kernel', ['perf-event-open']), 'EPERM');
  });

  attack(B, 'userfaultfd is blocked', async () => {
    assert.equal(await probe1(b, id, 'kernel', ['userfaultfd']), 'EPERM');
  });

  attack(B, 'io_uring_setup is blocked', async () => {
    assert.equal(await probe1(b, id, 'kernel', ['io-uring-setup']), 'EPERM');
  });

  attack(B, 'open_by_handle_at ("shocker") is blocked', async () => {
    assert.equal(await probe1(b, id, 'kernel', ['open-by-handle-at']), 'EPERM');
  });

  attack(B, 'clock: settimeofday, clock_settime and clock_adjtime are refused; host clock unchanged', async () => {
    const before = Date.now();
    assert.equal(await probe1(b, id, 'kernel', ['settimeofday']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['clock-settime']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['adjtimex']), 'EPERM');
    // busybox date prints the requested date and exits 0 even when it cannot set it: judge by its error and the clock.
    const bb = await sh(b, id, 'date -s "2040-01-01 00:00:00" >/dev/null; date +%s');
    assert.match(bb.stderr, /Operation not permitted/);
    const inside = Number(bb.stdout.trim().split('\n').pop());
    assert.ok(Math.abs(inside * 1000 - Date.now()) < 10_000, 'the sandbox clock is the host clock, unchanged');
    assert.ok(Math.abs(Date.now() - before) < 30_000, 'host clock did not jump');
  });

  attack(B, "hostname: sethostname/setdomainname are refused; the host's name is unchanged", async () => {
    assert.equal(await probe1(b, id, 'kernel', ['sethostname', 'pwned-host']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['setdomainname', 'pwned-domain']), 'EPERM');
    const bb = await sh(b, id, 'hostname pwned-host; echo rc=$?; hostname');
    assert.doesNotMatch(bb.stdout, /rc=0/);
    assert.match(bb.stdout, new RegExp(`^${id}$`, 'm'), 'the sandbox keeps its own UTS name (its id)');
  });

  attack(B, 'mknod of block and char devices is refused (no CAP_MKNOD)', async () => {
    assert.equal(await probe1(b, id, 'kernel', ['mknod', '/tmp/sda', 'b', '8', '0']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['mknod', '/tmp/vda', 'b', '254', '0']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['mknod', '/tmp/mem', 'c', '1', '1']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['mknod', '/tmp/kmsg', 'c', '1', '11']), 'EPERM');
    if (b.isolation === 'gvisor') {
      // gVisor's own /dev (a tmpfs inside its kernel) takes the node, but a node names one of gVisor's devices,
      // and it has no disks: opening it is ENXIO. Nothing reaches a host device.
      assert.equal(await probe1(b, id, 'kernel', ['mknod', '/dev/sda', 'b', '8', '0']), 'OK');
      assert.equal(await probe1(b, id, 'kernel', ['read', '/dev/sda']), 'ENXIO');
      await sh(b, id, 'rm -f /dev/sda');
    } else {
      assert.equal(await probe1(b, id, 'kernel', ['mknod', '/dev/sda', 'b', '8', '0']), 'EPERM');
    }
  });

  attack(B, 'device access: /dev/mem, /dev/kmsg, /dev/sda, /dev/vda are absent; /dev holds only the safe set', async () => {
    // gVisor has its own FUSE and TUN devices (in its kernel, not the host's): opening them is refused without privilege.
    const gvisorOwn: Record<string, string> = { '/dev/fuse': 'EPERM', '/dev/net/tun': 'E77' };
    for (const dev of ['/dev/mem', '/dev/kmem', '/dev/port', '/dev/kmsg', '/dev/sda', '/dev/vda', '/dev/nvme0n1', '/dev/fuse', '/dev/net/tun']) {
      const want = b.isolation === 'gvisor' ? (gvisorOwn[dev] ?? 'ENOENT') : 'ENOENT';
      assert.equal(await probe1(b, id, 'kernel', ['read', dev]), want, dev);
    }
    const ls = await sh(b, id, 'ls /dev');
    const names = ls.stdout.split('\n').filter(Boolean).sort();
    const allowed = new Set(['core', 'fd', 'full', 'mqueue', 'null', 'ptmx', 'pts', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'tty', 'urandom', 'zero', ...per(b, { container: [], gvisor: ['fuse', 'net'] })]);
    assert.deepEqual(names.filter((n) => !allowed.has(n)), [], 'no unexpected device nodes');
  });

  attack(B, 'port I/O: ioperm and iopl are refused', async () => {
    assert.equal(await probe1(b, id, 'kernel', ['ioperm']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['iopl']), 'EPERM');
  });

  attack(B, "kernel log: syslog(READ_ALL) and dmesg are refused (gVisor: its own made-up log, nothing of the host's)", async () => {
    if (b.isolation === 'gvisor') {
      assert.equal(await probe1(b, id, 'kernel', ['syslog']), 'OK');
      const log = (await sh(b, id, 'dmesg')).stdout;
      assert.match(log, /Starting gVisor/);
      assert.ok(!log.includes(os.hostname()) && !/Linux version|Command line:|BIOS/.test(log), `host kernel log lines inside:\n${log}`);
      return;
    }
    assert.equal(await probe1(b, id, 'kernel', ['syslog']), 'EPERM');
    const bb = await sh(b, id, 'dmesg >/dev/null; echo rc=$?');
    assert.doesNotMatch(bb.stdout, /rc=0/);
  });

  attack(B, 'swapoff and acct are refused', async () => {
    assert.equal(await probe1(b, id, 'kernel', ['swapoff', '/tmp/x']), 'EPERM');
    assert.equal(await probe1(b, id, 'kernel', ['acct', '/tmp/acct']), 'EPERM');
  });

  attack(B, "capabilities: the bounding set is exactly podman's default; NoNewPrivs=1; seccomp filter on", async () => {
    const st = await sh(b, id, 'grep -E "^(CapBnd|CapEff|CapAmb|NoNewPrivs|Seccomp):" /proc/self/status');
    const f = Object.fromEntries(st.stdout.trim().split('\n').map((l) => l.split(/:\s+/) as [string, string]));
    const mask = SANDBOX_CAPABILITIES.reduce((m, c) => m | (1n << BigInt(CAP_NUMBERS[c]!)), 0n);
    assert.equal(BigInt(`0x${f.CapBnd}`), mask);
    assert.equal(BigInt(`0x${f.CapEff}`), mask);
    // gVisor's /proc/self/status has no CapAmb or NoNewPrivs lines (the setuid attack below checks the effect).
    if (b.isolation === 'container') {
      assert.equal(BigInt(`0x${f.CapAmb}`), 0n);
      assert.equal(f.NoNewPrivs, '1');
    }
    assert.equal(f.Seccomp, '2');
    for (const c of ['CAP_SYS_ADMIN', 'CAP_NET_RAW', 'CAP_NET_ADMIN', 'CAP_SYS_MODULE', 'CAP_SYS_PTRACE', 'CAP_MKNOD', 'CAP_SYS_TIME', 'CAP_SYS_BOOT', 'CAP_DAC_READ_SEARCH', 'CAP_SYS_RAWIO', 'CAP_BPF', 'CAP_PERFMON', 'CAP_SYSLOG']) {
      assert.equal((mask >> BigInt(CAP_NUMBERS[c]!)) & 1n, 0n, `${c} must not be granted`);
    }
  });

  attack(B, 'setuid-root binary gains nothing (no_new_privs): uid stays 1000, no caps, setuid(0) EPERM', async () => {
    await sh(b, id, 'cp /probes/procs /tmp/suid-procs && chown 0:0 /tmp/suid-procs && chmod 4755 /tmp/suid-procs');
    assert.match((await sh(b, id, 'stat -c %A /tmp/suid-procs')).stdout, /^-rwsr-xr-x/);
    const lines = await probe(b, id, 'procs', ['creds'], { user: 'user' });
    const r = await sh(b, id, '/tmp/suid-procs creds', { user: 'user' });
    assert.equal(lines[0], 'uid=1000 euid=1000');
    const out = r.stdout;
    assert.match(out, /^uid=1000 euid=1000$/m, 'the setuid bit is ignored');
    assert.match(out, /^CapEff:\s+0+$/m);
    if (b.isolation === 'container') assert.match(out, /^NoNewPrivs:\s+1$/m);
    assert.match(out, /^setuid0=EPERM$/m);
    // busybox su is not setuid here and cannot switch without privilege either.
    const su = await sh(b, id, 'su -c id root </dev/null; echo rc=$?', { user: 'user' });
    assert.doesNotMatch(su.stdout, /uid=0/);
  });

  attack(B, 'root in the sandbox is host uid 100000: processes and files it makes are unprivileged on the host', async () => {
    const map = await sh(b, id, 'cat /proc/self/uid_map /proc/self/gid_map');
    const rows = map.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/).map(Number));
    // Inside gVisor the map is gVisor's own (identity); the host mapping applies to its gofer, which writes the files.
    const hostBase = per(b, { container: rows[0]![1]!, gvisor: 100000 });
    if (b.isolation === 'container') {
      for (const row of rows) {
        assert.equal(row[0], 0);
        assert.ok(row[1]! >= 1, 'container root maps to a non-zero host id');
        assert.ok(row[1]! + row[2]! <= 2 ** 32 - 1);
      }
    }
    const pids = sandboxHostPids(id);
    assert.ok(pids.length > 0, 'the sandbox has processes in its cgroup');
    for (const pid of pids) {
      const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
      const uid = Number(/^Uid:\s+(\d+)/m.exec(status)![1]);
      // gVisor's kernel and its ptrace stubs run as nobody (65534), its gofer as the mapped root.
      assert.ok(uid >= hostBase || (b.isolation === 'gvisor' && uid === 65534), `host pid ${pid} runs as host uid ${uid}, not root`);
    }
    await sh(b, id, 'echo x > /tmp/owned-by-root-inside');
    const upper = path.join(b.d.dataDir, 'sandboxes', id, 'disk', 'upper', 'tmp', 'owned-by-root-inside');
    assert.equal(fs.statSync(upper).uid, hostBase, 'written as the shifted uid on the host');
  });
}, { microvm: true });

/**
 * Under microvm the sandbox's root is root of its own VM: full capabilities, no seccomp filter, no user
 * namespace. Mounts, namespaces, modules, kexec, bpf, raw devices, port I/O, the clock and the hostname are
 * the guest kernel's, and each syscall that container and gVisor refuse succeeds or fails on the guest
 * kernel's own terms. None of it reaches the host: the guard checks the host after each attack (mounts,
 * modules, sysctls, hostname, the clock, the victim). What stands between such a root and the host is QEMU
 * (its emulated devices, with its seccomp filter, own uid and chroot): the TCG caveat in SECURITY.md.
 * The container's expectations are above; these record the guest's outcomes so a change shows.
 */
function guestRootAttacks(): void {
  before(async () => {
    b = await startBattery('microvm');
    id = await createSandbox(b, { probes: ['kernel', 'procs'] });
    await sh(b, id, 'mkdir -p /tmp/m /tmp/old');
  });
  after(async () => {
    await stopBattery(b);
  });

  attack(B, "guest root has every capability and no seccomp filter (the VM is the boundary)", async () => {
    const st = await sh(b, id, 'grep -E "^(CapEff|NoNewPrivs|Seccomp):" /proc/self/status; cat /proc/self/uid_map');
    assert.match(st.stdout, /^CapEff:\s+0*1ffffffffff$/m);
    assert.match(st.stdout, /^Seccomp:\s+0$/m);
    assert.match(st.stdout, /^\s*0\s+0\s+4294967295$/m, 'no user namespace: guest uid 0 is the guest kernel\'s root');
    assert.notEqual((await sh(b, id, 'uname -r')).stdout.trim(), os.release());
  });

  attack(B, 'setuid-root binary gains nothing in the guest either: the agent (its init) and every command run with no_new_privs', async () => {
    // The agent sets no_new_privs on itself as the guest's init, so every process it starts inherits it: commands
    // as root or user, background ones, terminals. Without it `user` would become guest root through any setuid file.
    assert.match((await sh(b, id, 'grep NoNewPrivs /proc/1/status')).stdout, /^NoNewPrivs:\s+1$/m, 'the agent itself');
    for (const user of [undefined, 'user']) {
      assert.match((await sh(b, id, 'grep NoNewPrivs /proc/self/status', user ? { user } : {})).stdout, /^NoNewPrivs:\s+1$/m, `as ${user ?? 'root'}`);
    }
    await sh(b, id, 'cp /probes/procs /tmp/suid-procs && chown 0:0 /tmp/suid-procs && chmod 4755 /tmp/suid-procs');
    assert.match((await sh(b, id, 'stat -c %A /tmp/suid-procs')).stdout, /^-rwsr-xr-x/);
    const out = (await sh(b, id, '/tmp/suid-procs creds', { user: 'user' })).stdout;
    assert.match(out, /^uid=1000 euid=1000$/m, 'the setuid bit is ignored');
    assert.match(out, /^CapEff:\s+0+$/m);
    assert.match(out, /^NoNewPrivs:\s+1$/m);
    assert.match(out, /^setuid0=EPERM$/m);
    // A background command is started the same way.
    const bg = await sh(b, id, 'grep NoNewPrivs /proc/self/status > /tmp/bg-nnp', { user: 'user', background: true });
    await api(b.url, 'GET', `/v1/sandboxes/${id}/commands/${bg.pid}/wait`);
    assert.match((await sh(b, id, 'cat /tmp/bg-nnp')).stdout, /^NoNewPrivs:\s+1$/m, 'a background command');
  });

  attack(B, "mounts and namespaces are the guest kernel's: they succeed and change only the VM", async () => {
    for (const a of [['mount-tmpfs', '/tmp/m'], ['mount-proc', '/tmp/m'], ['mount-bind', '/', '/tmp/m'], ['fsopen', 'tmpfs'], ['open-tree', '/']]) {
      assert.equal(await probe1(b, id, 'kernel', a), 'OK', a.join(' '));
    }
    await sh(b, id, 'umount /tmp/m; umount /tmp/m; umount /tmp/m');
    for (const ns of ['user', 'mount', 'net', 'pid', 'uts', 'ipc', 'cgroup', 'time']) {
      assert.equal(await probe1(b, id, 'kernel', ['unshare', ns]), 'OK', `unshare(${ns})`);
    }
    assert.equal(await probe1(b, id, 'kernel', ['clone3', 'user']), 'OK');
    // A mount seen from the host: none (the guard's mount check runs after this).
    assert.equal(await probe1(b, id, 'kernel', ['setns', `/proc/${b.guard.victimPid}/ns/mnt`]), 'ENOENT', 'host pids do not exist in the guest');
  });

  attack(B, 'chroot double escape reaches only the guest root', async () => {
    const lines = await probe(b, id, 'kernel', ['chroot-escape', '/etc/hostname']);
    assert.deepEqual(lines.slice(0, 2), ['OK', 'OK']);
    const marker = await probe(b, id, 'kernel', ['chroot-escape', b.guard.markerPath]);
    assert.equal(marker[2], `open ${b.guard.markerPath}: ENOENT`, 'host files stay out of reach');
  });

  attack(B, "modules, kexec, keyrings, bpf, perf, userfaultfd, io_uring: the guest kernel's (no host module appears)", async () => {
    // A bogus module image is rejected by the guest kernel's loader (ENOEXEC), not by a filter.
    assert.equal(await probe1(b, id, 'kernel', ['init-module']), 'E8');
    assert.equal(await probe1(b, id, 'kernel', ['delete-module', 'ext4']), 'ENOENT');
    // kexec_load with no segments is accepted (it unloads the guest's crash kernel: there is none). reboot is
    // left out here: it ends the VM (the sysrq attack in proc.test.ts covers a guest rebooting itself).
    assert.equal(await probe1(b, id, 'kernel', ['kexec-load']), 'OK');
    for (const a of ['keyctl', 'add-key', 'bpf', 'perf-event-open', 'userfaultfd', 'io-uring-setup']) {
      assert.equal(await probe1(b, id, 'kernel', [a]), 'OK', a);
    }
  });

  attack(B, "raw devices: /dev/mem and the VM's disks are readable by guest root (its own memory and disks), no host disk", async () => {
    assert.equal(await probe1(b, id, 'kernel', ['mknod', '/tmp/mem', 'c', '1', '1']), 'OK');
    assert.match(await probe1(b, id, 'kernel', ['read', '/dev/mem']), /^OK \d+$/);
    // vda is the template's read-only image (the same bytes every sandbox of the template sees).
    assert.match(await probe1(b, id, 'kernel', ['read', '/dev/vda']), /^OK \d+$/);
    assert.equal(await probe1(b, id, 'kernel', ['read', '/dev/sda']), 'ENOENT');
    const disks = (await sh(b, id, 'ls /sys/block')).stdout.split('\n').filter(Boolean).sort();
    assert.deepEqual(disks, ['vda', 'vdb'], 'only the two virtio-blk disks QEMU gives it');
  });

  attack(B, "port I/O (ioperm, iopl) is allowed: it reaches QEMU's emulated devices, the TCG caveat", async () => {
    assert.equal(await probe1(b, id, 'kernel', ['ioperm']), 'OK');
    assert.equal(await probe1(b, id, 'kernel', ['iopl']), 'OK');
  });

  attack(B, "the clock and the hostname: guest root sets the VM's, the host's are unchanged", async () => {
    assert.equal(await probe1(b, id, 'kernel', ['sethostname', 'pwned-host']), 'OK');
    assert.equal(await probe1(b, id, 'kernel', ['settimeofday']), 'OK');
    const inside = Number((await sh(b, id, 'date +%s')).stdout.trim());
    assert.ok(inside * 1000 - Date.now() > 300 * 86400_000, "the guest's clock moved a year ahead");
    assert.ok(Math.abs(Date.now() - performance.timeOrigin - performance.now()) < 60_000, 'the host clock did not');
    // Put the guest back (other attacks compare its clock with the host's).
    await sh(b, id, `date -s @${Math.floor(Date.now() / 1000)} >/dev/null; hostname ${id}`);
  });

  attack(B, "the guest's kernel log is its own: it never shows the host's", async () => {
    assert.equal(await probe1(b, id, 'kernel', ['syslog']), 'OK');
    const log = (await sh(b, id, 'dmesg')).stdout;
    assert.match(log, /Linux version/);
    const hostCmdline = fs.readFileSync('/proc/cmdline', 'utf8').trim();
    assert.ok(!log.includes(hostCmdline), "the host's kernel command line in the guest's log");
    assert.match(log, new RegExp(`capsule\\.id=${id}`), "the guest's own command line");
  });

  attack(B, 'no host process runs as root for the sandbox: QEMU runs as its own uid, chrooted', async () => {
    const pids = sandboxHostPids(id);
    assert.ok(pids.length > 0, "QEMU is in the sandbox's cgroup");
    for (const pid of pids) {
      const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
      const uid = Number(/^Uid:\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(status)![1]);
      assert.ok(uid !== 0, `host pid ${pid} runs as root`);
      assert.match(status, /^CapEff:\s+0+$/m, `host pid ${pid} holds capabilities`);
      assert.equal(fs.readlinkSync(`/proc/${pid}/root`) !== '/', true, `host pid ${pid} is not chrooted`);
    }
  });
}
