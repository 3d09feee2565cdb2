/**
 * Abuse battery, disk: every sandbox writes into its own ext4 of
 * `resources.diskMb` (a sparse image on a loop device), so a filler gets
 * ENOSPC at that size, an inode flood runs out of the sandbox's own inodes,
 * and the host's data-dir filesystem only ever gives up what the quota allows.
 * Also: the sandbox's mount table names no host path.
 */
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { api } from '../helpers/daemon.js';
import { assertDaemonAnswers, assertSandboxUsable, attack, createSandbox, per, probe, sh, sleepMs, forEachIsolation, startBattery, stopBattery, type Battery } from './helpers.js';

let b: Battery;
let id: string;
const B = () => b;
const DISK_MB = 64;
const MIB = 1024 * 1024;
/** Other work on this host (builds, other tests) moves free space a little while we measure. */
const HOST_SLACK_MIB = 32;

function hostFree(dir: string): { bytes: number; inodes: number } {
  const s = fs.statfsSync(dir);
  return { bytes: s.bavail * s.bsize, inodes: s.ffree };
}

forEachIsolation('security: disk quota', (isolation) => {
  before(async () => {
    b = await startBattery(isolation);
    id = await createSandbox(b, { probes: ['res'], resources: { diskMb: DISK_MB } });
  });
  after(async () => {
    await stopBattery(b);
  });

  attack(B, 'the sandbox reports its quota: info has diskMb, df / inside shows a disk of that size', async () => {
    const info = await api(b.url, 'GET', `/v1/sandboxes/${id}`);
    assert.equal(info.json.resources.diskMb, DISK_MB);
    const df = await sh(b, id, 'df -k / | tail -n 1');
    const total = Number(df.stdout.trim().split(/\s+/)[1]);
    assert.ok(total > DISK_MB * 1024 * 0.8 && total <= DISK_MB * 1024, `df / says ${total} KiB for a ${DISK_MB} MiB quota: ${df.stdout}`);
  });

  attack(B, 'disk filler: a writer stops with ENOSPC near diskMb; the host filesystem loses at most the quota and gets it back', async () => {
    const before = hostFree(b.d.dataDir);
    const lines = await probe(b, id, 'res', ['fill-bytes', '/tmp/disk-fill', '1024'], { timeoutMs: 60_000 });
    const m = /^mib=(\d+) err=(\w+)$/.exec(lines[0] ?? '');
    assert.ok(m, lines.join('\n'));
    assert.equal(m[2], 'ENOSPC', `wrote ${m[1]} MiB and stopped with ${m[2]}`);
    assert.ok(Number(m[1]) >= DISK_MB / 2 && Number(m[1]) <= DISK_MB, `wrote ${m[1]} MiB into a ${DISK_MB} MiB disk`);
    const full = hostFree(b.d.dataDir);
    const used = (before.bytes - full.bytes) / MIB;
    assert.ok(used < DISK_MB + HOST_SLACK_MIB, `the host lost ${used.toFixed(0)} MiB to a ${DISK_MB} MiB sandbox`);

    // The shell sees the same: dd says "No space left on device".
    const dd = await sh(b, id, 'dd if=/dev/zero of=/tmp/dd-fill bs=1M count=512 2>&1; echo rc=$?', { timeoutMs: 60_000 });
    assert.match(dd.stdout, /No space left on device/);
    assert.doesNotMatch(dd.stdout, /rc=0/);

    // Deleting the files frees the sandbox's disk and (online discard) the host's space too.
    await sh(b, id, 'rm -f /tmp/disk-fill /tmp/dd-fill');
    const again = await sh(b, id, 'dd if=/dev/zero of=/tmp/after bs=1M count=8 2>/dev/null && wc -c < /tmp/after && rm /tmp/after');
    assert.equal(again.stdout.trim(), String(8 * MIB), 'the sandbox can write again after freeing space');
    await assertSandboxUsable(b, id);
    // Under microvm the guest mounts its disk with online discard: ext4 sends the frees when its journal commits
    // (every 5 s) and QEMU punches the holes into the sparse disk image, so the space comes back a few seconds late.
    const settle = b.isolation === 'microvm' ? Date.now() + 20_000 : 0;
    let kept = (before.bytes - hostFree(b.d.dataDir).bytes) / MIB;
    while (kept >= HOST_SLACK_MIB && Date.now() < settle) {
      await sleepMs(500);
      kept = (before.bytes - hostFree(b.d.dataDir).bytes) / MIB;
    }
    assert.ok(kept < HOST_SLACK_MIB, `the host still misses ${kept.toFixed(0)} MiB after the sandbox freed its files`);
    await assertDaemonAnswers(b);
  });

  attack(B, 'inode exhaustion: empty files run out of the sandbox disk inodes (ENOSPC), not the host', async () => {
    const before = hostFree(b.d.dataDir);
    const dfi = await sh(b, id, 'df -i / | tail -n 1');
    const inodes = Number(dfi.stdout.trim().split(/\s+/)[1]);
    assert.ok(inodes > 0 && inodes < 1_000_000, `the sandbox disk has ${inodes} inodes: ${dfi.stdout}`);
    const mk = await sh(b, id, 'mkdir /tmp/many-files && /probes/res fill-files /tmp/many-files 2000000', { timeoutMs: 120_000 });
    const m = /^files=(\d+) err=(\w+)$/m.exec(mk.stdout);
    assert.ok(m, mk.stdout + mk.stderr);
    assert.equal(m[2], 'ENOSPC');
    assert.ok(Number(m[1]) <= inodes, `made ${m[1]} files on a disk with ${inodes} inodes`);
    const lost = before.inodes - hostFree(b.d.dataDir).inodes;
    assert.ok(lost < Number(m[1]) / 2, `the host lost ${lost} inodes while the sandbox made ${m[1]} files`);

    const rm = await sh(b, id, 'rm -rf /tmp/many-files && echo ok', { timeoutMs: 120_000 });
    assert.equal(rm.stdout, 'ok\n');
    await assertSandboxUsable(b, id);
  }, { timeout: 240_000 });

  attack(B, 'diskMb out of bounds (0, 15, 1.5, a string, above the schema and above the daemon maximum) answers 400', async () => {
    for (const diskMb of [0, 15, 1.5, '64', -1, 2 * 1024 * 1024, 1024 * 1024]) {
      const r = await api(b.url, 'POST', '/v1/sandboxes', { template: 'busybox', resources: { diskMb } });
      assert.equal(r.status, 400, `diskMb ${JSON.stringify(diskMb)}: ${r.status} ${r.text}`);
      assert.equal(r.json.error.code, 'invalid_argument');
    }
    await assertDaemonAnswers(b);
  });

  attack(B, 'mountinfo inside a sandbox names no host path (data dir, template, agent dir, /work, /var/lib/capsule, /tmp) nor loop device', async () => {
    const r = await sh(b, id, 'cat /proc/self/mountinfo; echo ---; cat /proc/1/mountinfo; echo ---; cat /proc/mounts');
    assert.equal(r.exitCode, 0, r.stderr);
    const text = r.stdout;
    // Under gVisor the root is its gofer's 9p mount of the same overlay.
    // Under microvm the root is the guest's overlay of its two virtio-blk disks, mounted under the guest's /mnt.
    assert.match(text, per(b, { container: / - overlay overlay /, gvisor: / \/ \/ rw .* - 9p none /, microvm: / - overlay overlay / }), 'the root mount is listed (the check is meaningful)');
    // Host paths as absolute paths: "disk/work" in the overlay's options is the sandbox dir's relative name, not /work.
    const absolute = (p: string) => new RegExp(`(^|[\\s=,:])${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(/|[\\s,]|$)`, 'm');
    for (const p of [b.d.dataDir, '/work', '/var/lib/capsule', os.tmpdir()]) {
      assert.doesNotMatch(text, absolute(p), `mountinfo shows the host path ${p}:\n${text}`);
    }
    for (const needle of ['capsule-test-', 'sandboxes/', 'templates/', b.d.dataDir]) assert.ok(!text.includes(needle), `mountinfo shows ${needle}:\n${text}`);
    // The loop device's number would tell how many sandbox disks the host has attached.
    assert.doesNotMatch(text, /\/dev\/loop\d/, `mountinfo names the host's loop device:\n${text}`);
    for (const line of r.stdout.split('\n')) {
      const f = line.split(' ');
      if (f.length < 10) continue;
      // Field 4 is the mount's root inside its filesystem: for a bind mount, a path on the source fs.
      assert.ok(!/^\/(tmp|var|work|home|root|srv|opt)\//.test(f[3]!), `bind root names a host path: ${line}`);
      // (Under microvm the overlay's dirs are the guest's own /mnt paths, on its virtio disks: no host path.)
      if (b.isolation === 'microvm') assert.doesNotMatch(line, /(lowerdir|upperdir|workdir)=\/(?!mnt\/)/, `overlay options name a host path: ${line}`);
      else assert.doesNotMatch(line, /(lowerdir|upperdir|workdir)=\//, `overlay options name an absolute host path: ${line}`);
    }
  });
}, { microvm: true });
