/**
 * The microVM backend (issue 16, ADR 0017) through a real daemon: a busybox
 * sandbox with isolation "microvm" boots under QEMU (software emulation here,
 * allowed by the test-only CAPSULE_MICROVM_ALLOW_TCG), runs commands with
 * streamed output over the multiplexed virtio-serial port, writes and reads
 * files, answers `unsupported` for what it lacks, and once killed leaves
 * nothing: no QEMU process, disks, sockets or cgroups. One boot for the whole
 * file (a few seconds under TCG).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { after, before, describe, it } from 'node:test';
import { removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { leftovers, settledLeftovers } from '../../helpers/leftovers.js';
import { Sandbox, UnsupportedError, type ConnectionOptions, type FilesystemEvent } from '../../../src/sdk/index.js';
import { Screen } from '../interactive/terminal.js';
import { checkMicrovm } from '../../../src/runtime/microvm/doctor.js';
import { microvmSkip } from '../../helpers/microvm.js';

function readOr(p: string): string {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

let d: TestDaemon;
let dataDir: string;
let conn: ConnectionOptions;
let sbx: Sandbox;

describe('microVM sandboxes (QEMU -M microvm)', { skip: microvmSkip(), timeout: 5 * 60_000 }, () => {
  before(async () => {
    dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir, env: { CAPSULE_MICROVM_ALLOW_TCG: '1' } });
    conn = { apiUrl: d.url };
    sbx = await Sandbox.create({ ...conn, template: 'busybox', isolation: 'microvm', resources: { cpus: 1, memoryMb: 256, pids: 48 } });
  });
  after(async () => {
    await sbx?.kill().catch(() => {});
    await d?.stop();
    if (dataDir) await removeDataDir(dataDir);
  });

  it('GET /v1/info lists microvm as available, with its capabilities', async () => {
    const r = await fetch(`${d.url}/v1/info`, { headers: { authorization: `Bearer ${d.adminKey}` } });
    const info = (await r.json()) as { backends: Array<{ isolation: string; available: boolean; kind?: string; name?: string; capabilities?: Record<string, unknown> }> };
    const vm = info.backends.find((b) => b.isolation === 'microvm')!;
    assert.equal(vm.available, true, JSON.stringify(vm));
    assert.equal(vm.kind, 'microvm');
    assert.match(vm.name!, /^qemu \S+ microvm \((tcg|kvm)\)$/);
    assert.deepEqual([vm.capabilities!.pause, vm.capabilities!.stop, vm.capabilities!.exportChanges, vm.capabilities!.network], [false, false, false, ['none', 'gateway']]);
    assert.equal((await sbx.getInfo()).isolation, 'microvm');
  });

  it('capsule doctor reports QEMU, the kernel and the accelerator', async () => {
    const c = await checkMicrovm(false, { ...process.env, CAPSULE_MICROVM_ALLOW_TCG: '' });
    assert.equal(c.ok, true, JSON.stringify(c));
    assert.match(c.message, /qemu-system-x86_64, kernel \S+/);
    assert.match(c.message, /KVM|no hardware virtualization here .* "microvm" is off/);
  });

  it('runs commands in its own kernel: foreground, and background with streamed output and stdin', async () => {
    const r = await sbx.commands.run('uname -r; hostname; echo err >&2; exit 3');
    assert.equal(r.exitCode, 3);
    const [release, host] = r.stdout.split('\n');
    assert.notEqual(release, os.release(), 'the guest runs its own kernel');
    assert.equal(host, sbx.id);
    assert.equal(r.stderr, 'err\n');
    const seen: string[] = [];
    const h = await sbx.commands.run('for i in 1 2 3; do echo "line $i"; sleep 0.2; done; read -r x; echo "got $x"', {
      background: true,
      streamStdin: true,
      onStdout: (s) => void seen.push(s),
    });
    await h.sendStdin('hello\n');
    const done = await h.wait();
    assert.equal(done.exitCode, 0);
    assert.equal(seen.join(''), 'line 1\nline 2\nline 3\ngot hello\n');
  });

  it('writes and reads files, large ones too, on its own disk', async () => {
    await sbx.files.write('/work/hello.txt', 'hi from the host\n');
    assert.equal(await sbx.files.read('/work/hello.txt'), 'hi from the host\n');
    assert.equal((await sbx.commands.run('cat /work/hello.txt')).stdout, 'hi from the host\n');
    // More than a stream's window (256 KiB) each way, so credits must flow.
    const big = Buffer.alloc(3 * 1024 * 1024 + 7, 0);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31 + 7) & 0xff;
    await sbx.files.write('/work/big.bin', big);
    const back = await sbx.files.read('/work/big.bin', { format: 'bytes' });
    assert.equal(Buffer.compare(Buffer.from(back), big), 0);
    assert.equal((await sbx.commands.run('wc -c < /work/big.bin')).stdout.trim(), String(big.length));
    // The writable layer is the sandbox's own disk: root is on an overlay.
    assert.match((await sbx.commands.run('grep " / " /proc/mounts')).stdout, /^overlay \/ overlay /);
  });

  it('gives blocks the guest frees back to the host (discard through virtio-blk punches holes in disk.img)', async () => {
    const disk = `${dataDir}/microvm/sb/${sbx.id}/disk.img`;
    const allocated = () => fs.statSync(disk).blocks * 512;
    const MiB = 2 ** 20;
    await sbx.commands.run('sync');
    const base = allocated();
    // Random bytes: QEMU's detect-zeroes could otherwise store zeros as holes and prove nothing.
    const w = await sbx.commands.run('head -c 67108864 /dev/urandom > /work/fill.bin && sync && wc -c < /work/fill.bin', { timeoutMs: 120_000 });
    assert.equal(w.stdout.trim(), String(64 * MiB), w.stderr);
    const full = allocated();
    assert.ok(full - base >= 60 * MiB, `64 MiB written in the guest allocated only ${((full - base) / MiB).toFixed(1)} MiB on the host`);
    await sbx.commands.run('rm /work/fill.bin && sync');
    // ext4's online discard goes out when the guest's journal commits the free (its commit interval is 5 s).
    let now = allocated();
    const deadline = Date.now() + 30_000;
    while (now - base > 8 * MiB && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 500));
      await sbx.commands.run('sync');
      now = allocated();
    }
    console.log(`disk.img allocated: ${(base / MiB).toFixed(1)} MiB before, ${(full / MiB).toFixed(1)} MiB with 64 MiB written, ${(now / MiB).toFixed(1)} MiB after the delete`);
    assert.ok(now - base <= 8 * MiB, `after the delete the host still holds ${((now - base) / MiB).toFixed(1)} MiB more than before`);
  });

  it('holds processes to the pids limit inside the guest (a cgroup around the agent); memory is the VM size', async () => {
    assert.equal((await sbx.commands.run('cat /sys/fs/cgroup/sandbox/pids.max')).stdout, '48\n');
    const r = await sbx.commands.run('i=0; while [ $i -lt 60 ]; do sleep 5 </dev/null >/dev/null 2>&1 & i=$((i+1)); done 2>&1 | grep -c "can.t fork"; true');
    assert.ok(Number(r.stdout.trim()) > 0, `some forks were refused: ${r.stdout}`);
    await sbx.commands.run('kill -9 $(pidof sleep) 2>/dev/null; true');
    const mem = Number((await sbx.commands.run("grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2")).stdout) / 1024;
    assert.ok(mem > 180 && mem <= 256, `guest memory ${mem} MiB for memoryMb 256`);
  });

  it('a terminal (size, ^C from the guest kernel\'s line discipline) and a file watch work through the mux', async () => {
    const sc = new Screen();
    const term = await sbx.pty.create({ cols: 101, rows: 33, onData: sc.onData });
    await term.sendInput('stty size\n');
    await sc.until(/33 101\r\n/);
    // A terminal's shell, like every process the guest's init starts, runs with no_new_privs.
    await term.sendInput('grep NoNewPrivs /proc/self/status\n');
    await sc.until(/NoNewPrivs:\s+1\r\n/);
    await term.sendInput('sleep 100\n');
    await new Promise((r) => setTimeout(r, 500));
    const m = sc.mark();
    await term.sendInput('\x03');
    await term.sendInput('echo "after=$?"; exit 3\n');
    await sc.until(/after=130/, m);
    assert.deepEqual(await term.wait(), { exitCode: 3 });
    await sbx.commands.run('mkdir -p /watched');
    const events: FilesystemEvent[] = [];
    const w = await sbx.files.watchDir('/watched', (e) => void events.push(e));
    try {
      await sbx.commands.run('echo 1 > /watched/f.txt; rm /watched/f.txt');
      const has = (type: string) => events.some((e) => e.type === type && 'path' in e && e.path === 'f.txt');
      const deadline = Date.now() + 15_000;
      while (!(has('create') && has('remove')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.ok(has('create') && has('remove'), JSON.stringify(events));
    } finally {
      await w.stop();
    }
  });

  it('serves several agent connections at once over the one port', async () => {
    const runs = await Promise.all([1, 2, 3, 4, 5].map((i) => sbx.commands.run(`echo ${i}`)));
    assert.deepEqual(
      runs.map((r) => r.stdout),
      ['1\n', '2\n', '3\n', '4\n', '5\n'],
    );
  });

  it('answers unsupported for pause, as its capabilities say', async () => {
    await assert.rejects(sbx.pause(), (e: unknown) => e instanceof UnsupportedError);
    assert.equal((await sbx.commands.run('echo still here')).stdout, 'still here\n');
  });

  it('survives a daemon SIGKILL: re-adopted (its agent port relayed again), files and a background command kept', async () => {
    await sbx.files.write('/root/state', 'kept\n');
    const bg = await sbx.commands.run('sleep 1; echo bg-done > /root/bg', { background: true });
    assert.ok(bg.pid > 0);
    await d.kill();
    d = await startTestDaemon({ dataDir, env: { CAPSULE_MICROVM_ALLOW_TCG: '1' } });
    conn = { apiUrl: d.url };
    sbx = await Sandbox.connect(sbx.id, conn);
    assert.equal((await sbx.getInfo()).state, 'running');
    assert.equal(await sbx.files.read('/root/state'), 'kept\n');
    // The console's reader (the old daemon) is gone: QEMU must survive the guest writing to it.
    assert.equal((await sbx.commands.run('echo to-the-console > /dev/console; echo ok')).stdout, 'ok\n');
    const deadline = Date.now() + 10_000;
    while (!(await sbx.files.exists('/root/bg')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.equal(await sbx.files.read('/root/bg'), 'bg-done\n');
  });

  it('is killed with nothing left: no QEMU, disks, sockets or cgroups', async () => {
    const id = sbx.id;
    assert.ok(leftovers(id, dataDir).some((l) => l.startsWith('QEMU process') || l.startsWith('process')), 'QEMU runs while the sandbox does');
    // QEMU dropped root once started (-runas): a uid of its own, outside the containers' mapped range.
    const qemu = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p) && readOr(`/proc/${p}/cmdline`).includes(`/microvm/sb/${id}/`) && readOr(`/proc/${p}/comm`).startsWith('qemu'));
    assert.equal(qemu.length, 1, 'one QEMU');
    const uid = Number(readOr(`/proc/${qemu[0]}/status`).match(/^Uid:\s+(\d+)/m)?.[1]);
    assert.ok(uid >= 0x50000000, `QEMU runs as uid ${uid}`);
    await sbx.kill();
    assert.deepEqual(await settledLeftovers(id, dataDir), []);
  });
});
