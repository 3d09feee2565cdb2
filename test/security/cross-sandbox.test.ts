/**
 * Escape battery, sandbox to sandbox: B attacks A (and the host victim). Every
 * sandbox has its own pid, net, ipc, uts and mount namespaces and its own
 * writable layer over the shared template.
 */
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import {
  attack,
  createSandbox,
  getFile,
  per,
  probe1,
  sandboxHostPids,
  sandboxHostPidsMatching,
  sh,
  sleepMs,
  forEachIsolation,
  startBattery,
  stopBattery,
  type Battery,
} from './helpers.js';

let b: Battery;
let A: string;
let Bx: string;
let aSleepHostPid = 0;
const secret = `a-secret-${crypto.randomBytes(6).toString('hex')}`;
const port = 31337;
const B = () => b;

forEachIsolation('security: sandbox to sandbox', (isolation) => {
  before(async () => {
    b = await startBattery(isolation);
    [A, Bx] = await Promise.all([
      createSandbox(b, { envs: { A_SECRET: secret }, probes: ['net', 'procs'] }),
      createSandbox(b, { probes: ['net', 'procs', 'kernel'] }),
    ]);
    await sh(b, A, `echo ${secret} > /tmp/a-secret; echo ${secret} > /dev/shm/a-shm-secret`);
    await sh(b, A, `sleep 600 # ${secret}`, { background: true, timeoutMs: 0 });
    await sh(b, A, ['/probes/net', 'tcp-listen', String(port), '120'], { background: true, timeoutMs: 0 });
    await sh(b, A, ['/probes/net', 'unix-listen', `capsule-a-${secret}`, '120'], { background: true, timeoutMs: 0 });
    await sh(b, A, ['/probes/procs', 'shm-create', '0x5ec2e7', secret]);
    // Under gVisor A's processes are not host processes: the host target is gVisor's kernel process that runs
    // them (the pid runsc wrote for the driver). Under microvm it is A's QEMU (A's processes are the guest's).
    aSleepHostPid = 0; // set by the previous isolation's run of this file
    const sentry = () => Number(fs.readFileSync(path.join(b.d.dataDir, 'sandboxes', A, 'bundle', 'init.pid'), 'utf8').trim());
    for (let i = 0; i < 50 && aSleepHostPid === 0; i++) {
      aSleepHostPid =
        b.isolation === 'gvisor' ? sentry() : b.isolation === 'microvm' ? (sandboxHostPids(A)[0] ?? 0) : (sandboxHostPidsMatching(A, 'sleep 600')[0] ?? 0);
      if (aSleepHostPid === 0) await sleepMs(20);
    }
    assert.ok(aSleepHostPid > 0, "found A's sleeper on the host");
  });
  after(async () => {
    await stopBattery(b);
  });

  attack(B, "B cannot see A's processes or environment (/proc of A is invisible)", async () => {
    const r = await sh(b, Bx, 'ps -o pid,args; cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr "\\0" "\\n"');
    assert.ok(!r.stdout.includes(secret), "A's env or argv is visible from B");
    assert.doesNotMatch(r.stdout, /sleep 600/);
    assert.equal(await probe1(b, Bx, 'kernel', ['read', `/proc/${aSleepHostPid}/environ`]), 'ENOENT');
    // A does see its own secret (the test is meaningful).
    const a = await sh(b, A, 'cat /proc/1/environ | tr "\\0" "\\n" | grep -c A_SECRET || true; echo $A_SECRET');
    assert.match(a.stdout, new RegExp(secret));
  });

  attack(B, "B cannot read A's files: shell, files API, /dev/shm, /proc/<pid>/root", async () => {
    const r = await sh(b, Bx, `cat /tmp/a-secret /dev/shm/a-shm-secret /proc/*/root/tmp/a-secret 2>&1; grep -rl ${secret} /tmp /dev/shm /home /root 2>/dev/null`);
    assert.ok(!r.stdout.includes(secret));
    const g = await getFile(b, Bx, '/tmp/a-secret');
    assert.equal(g.status, 404);
    const gA = await getFile(b, A, '/tmp/a-secret');
    assert.equal(gA.bytes.toString(), `${secret}\n`, "A's own API read works");
  });

  attack(B, "B cannot signal A's processes (host pid of A's sleeper: ESRCH); A's process survives", async () => {
    assert.equal(await probe1(b, Bx, 'procs', ['kill', String(aSleepHostPid), '9']), 'ESRCH');
    assert.equal(await probe1(b, Bx, 'procs', ['kill', String(b.guard.victimPid), '9']), 'ESRCH');
    const k = await sh(b, Bx, `kill -9 ${aSleepHostPid} ${b.guard.victimPid}; echo rc=$?; kill -9 -1; echo done`);
    assert.doesNotMatch(k.stdout, /rc=0/);
    assert.match(k.stderr, /No such process/);
    await sleepMs(50);
    assert.ok(fs.existsSync(`/proc/${aSleepHostPid}`), "A's sleeper is alive");
    assert.ok(b.guard.victimAlive(), 'host victim is alive');
    const ps = await sh(b, A, 'ps -o args | grep -c "^sleep 600"');
    assert.equal(ps.stdout.trim(), '1');
  });

  attack(B, "B cannot ptrace or read the memory of A's processes or host processes (ESRCH)", async () => {
    for (const pid of [aSleepHostPid, b.guard.victimPid, process.pid]) {
      assert.equal(await probe1(b, Bx, 'procs', ['ptrace-attach', String(pid)]), 'ESRCH', `ptrace ${pid}`);
      // gVisor's kernel has neither process_vm_readv nor pidfd_open. Under microvm the host pids do not exist in the guest.
      assert.equal(await probe1(b, Bx, 'procs', ['vm-read', String(pid)]), per(b, { container: 'ESRCH', gvisor: 'ENOSYS', microvm: 'ESRCH' }), `process_vm_readv ${pid}`);
      assert.equal(await probe1(b, Bx, 'procs', ['pidfd-open', String(pid)]), per(b, { container: 'ESRCH', gvisor: 'ENOSYS', microvm: 'ESRCH' }), `pidfd_open ${pid}`);
    }
  });

  attack(B, "ptrace inside one sandbox: allowed on its own processes as root (same user), refused as another user", async () => {
    // Documented behaviour: CAP_SYS_PTRACE is not granted, but same-uid tracing is ordinary debugging.
    assert.equal(await probe1(b, Bx, 'procs', ['ptrace-child']), 'OK');
    const bg = await sh(b, Bx, 'sleep 30', { background: true, timeoutMs: 10_000 });
    // gVisor's kernel is stricter (Yama-like): attaching to a process that is not a descendant is EPERM, even for root.
    assert.equal(await probe1(b, Bx, 'procs', ['ptrace-attach', String(bg.pid)]), per(b, { container: 'OK', gvisor: 'EPERM', microvm: 'OK' }));
    assert.equal(await probe1(b, Bx, 'procs', ['ptrace-attach', String(bg.pid)], { user: 'user' }), 'EPERM', 'user 1000 cannot trace root');
    assert.equal(await probe1(b, Bx, 'procs', ['ptrace-attach', '1'], { user: 'user' }), 'EPERM', 'nor the agent');
    await sh(b, Bx, `kill ${bg.pid}`);
  });

  attack(B, "B cannot reach A's TCP port on 127.0.0.1 (separate network namespaces)", async () => {
    assert.equal(await probe1(b, A, 'net', ['connect', '127.0.0.1', String(port)]), 'OK', 'A reaches its own port');
    assert.equal(await probe1(b, Bx, 'net', ['connect', '127.0.0.1', String(port)]), 'ECONNREFUSED');
  });

  attack(B, "B cannot connect to A's abstract unix socket", async () => {
    assert.equal(await probe1(b, A, 'net', ['unix-connect', `capsule-a-${secret}`]), 'OK');
    assert.equal(await probe1(b, Bx, 'net', ['unix-connect', `capsule-a-${secret}`]), 'ECONNREFUSED');
  });

  attack(B, "B cannot attach A's SysV shared memory (separate IPC namespaces)", async () => {
    assert.equal(await probe1(b, A, 'procs', ['shm-read', '0x5ec2e7']), `OK ${secret}`);
    assert.equal(await probe1(b, Bx, 'procs', ['shm-read', '0x5ec2e7']), 'ENOENT');
  });

  attack(B, "A's writes to template files are copy-on-write: B and the host template see the original", async () => {
    const tpl = path.join(b.d.dataDir, 'templates', 'busybox', 'rootfs', 'etc', 'passwd');
    const before = fs.readFileSync(tpl, 'utf8');
    await sh(b, A, `echo "pwned:x:0:0::/:/bin/sh # ${secret}" >> /etc/passwd; rm -f /bin/ls`);
    const inB = await sh(b, Bx, 'cat /etc/passwd; test -e /bin/ls && echo ls-present');
    assert.ok(!inB.stdout.includes(secret));
    assert.match(inB.stdout, /ls-present/);
    assert.equal(fs.readFileSync(tpl, 'utf8'), before);
  });

  attack(B, 'each sandbox has its own hostname (UTS namespace)', async () => {
    assert.equal((await sh(b, A, 'hostname')).stdout.trim(), A);
    assert.equal((await sh(b, Bx, 'hostname')).stdout.trim(), Bx);
  });
}, { microvm: true });
