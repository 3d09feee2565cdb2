/**
 * Archives into layer trees (src/layers/apply-tar.ts + native/capsule-layer):
 * owners move into the mapped range, hostile names are refused, OCI whiteouts
 * and opaque markers become overlay ones, and a stacked overlay honours them.
 * Real files, real mknod/xattrs, real overlay mounts (root).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, describe, it } from 'node:test';
import tar from 'tar-stream';
import { applyTar, safeRelative } from '../../../src/layers/apply-tar.js';

const BASE = 100000;
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-layer-'));
after(() => {
  execFileSync('sh', ['-c', `grep -o " ${root}[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l`]);
  fs.rmSync(root, { recursive: true, force: true });
});

type Entry = Partial<tar.Header> & { name: string; body?: string };

function archive(entries: Entry[]): Readable {
  const pack = tar.pack();
  for (const { body, ...h } of entries) {
    if (body === undefined) pack.entry(h);
    else pack.entry(h, body);
  }
  pack.finalize();
  return pack as unknown as Readable;
}

let n = 0;
function layerDir(): string {
  const d = path.join(root, `l${n++}`);
  fs.mkdirSync(d);
  return d;
}

describe('applyTar', () => {
  it('normalises names and refuses ones that leave the root', () => {
    assert.equal(safeRelative('./a/./b/'), 'a/b');
    assert.equal(safeRelative('/etc/passwd'), 'etc/passwd');
    assert.throws(() => safeRelative('a/../../x'), /escapes/);
    assert.throws(() => safeRelative('a\0b'), /NUL/);
  });

  it('unpacks files, dirs, symlinks and hard links with shifted owners and kept modes', async () => {
    const dir = layerDir();
    const r = await applyTar(
      archive([
        { name: 'usr/', type: 'directory', mode: 0o755, uid: 0, gid: 0 },
        { name: 'usr/bin/tool', type: 'file', mode: 0o4755, uid: 0, gid: 0, body: '#!/bin/sh\n' },
        { name: 'home/user/.profile', type: 'file', mode: 0o600, uid: 1000, gid: 1000, body: 'x' },
        { name: 'usr/bin/alias', type: 'symlink', linkname: 'tool', uid: 0, gid: 0 },
        { name: 'usr/bin/hard', type: 'link', linkname: 'usr/bin/tool' },
        { name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0, uid: 0, gid: 0 },
        { name: 'big-uid', type: 'file', mode: 0o644, uid: 700000, gid: 700000, body: 'y' },
      ]),
      dir,
      { idMapBase: BASE, idMapSize: 65536 },
    );
    assert.equal(r.skipped, 1, 'the device node is skipped');
    const tool = fs.lstatSync(path.join(dir, 'usr/bin/tool'));
    assert.equal(tool.uid, BASE);
    assert.equal(tool.mode & 0o7777, 0o4755, 'setuid kept after the chown');
    assert.equal(fs.lstatSync(path.join(dir, 'home/user/.profile')).uid, BASE + 1000);
    assert.equal(fs.readlinkSync(path.join(dir, 'usr/bin/alias')), 'tool');
    assert.equal(fs.lstatSync(path.join(dir, 'usr/bin/hard')).ino, tool.ino);
    assert.equal(fs.existsSync(path.join(dir, 'dev/sda')), false);
    assert.equal(fs.lstatSync(path.join(dir, 'big-uid')).uid, BASE + 65534, 'ids past the range become nobody');
  });

  it('refuses to write through a symlink it planted, or to escape with ..', async () => {
    const dir = layerDir();
    await assert.rejects(
      applyTar(archive([{ name: 'evil', type: 'symlink', linkname: '/etc' }, { name: 'evil/passwd', type: 'file', body: 'pwned' }]), dir, { idMapBase: BASE, idMapSize: 65536 }),
      /below a symlink/,
    );
    await assert.rejects(applyTar(archive([{ name: '../../outside', type: 'file', body: 'x' }]), layerDir(), { idMapBase: BASE, idMapSize: 65536 }), /escapes/);
    await assert.rejects(applyTar(archive([{ name: 'h', type: 'link', linkname: '/etc/shadow' }]), layerDir(), { idMapBase: BASE, idMapSize: 65536 }), /did not make/);
  });

  it('puts a copy under its destination, owned as asked', async () => {
    const dir = layerDir();
    await applyTar(archive([{ name: 'main.py', type: 'file', mode: 0o644, uid: 501, gid: 20, body: 'print(1)' }]), dir, {
      idMapBase: BASE,
      idMapSize: 65536,
      prefix: '/app/src',
      owner: { uid: 1000, gid: 1000 },
    });
    const st = fs.lstatSync(path.join(dir, 'app/src/main.py'));
    assert.equal(st.uid, BASE + 1000);
    assert.equal(fs.lstatSync(path.join(dir, 'app')).uid, BASE, 'made parents belong to root');
  });

  it('bounds entries and bytes', async () => {
    await assert.rejects(
      applyTar(archive([{ name: 'a', type: 'file', body: 'x' }, { name: 'b', type: 'file', body: 'y' }]), layerDir(), { idMapBase: BASE, idMapSize: 65536, maxEntries: 1 }),
      (e: any) => e.code === 'payload_too_large',
    );
    await assert.rejects(
      applyTar(archive([{ name: 'a', type: 'file', body: 'x'.repeat(100) }]), layerDir(), { idMapBase: BASE, idMapSize: 65536, maxBytes: 10 }),
      (e: any) => e.code === 'payload_too_large',
    );
  });

  it('turns OCI whiteouts and opaque markers into overlay ones that hide the layers below', async () => {
    const lower = layerDir();
    fs.writeFileSync(path.join(lower, 'gone'), 'old');
    fs.mkdirSync(path.join(lower, 'dir'));
    fs.writeFileSync(path.join(lower, 'dir', 'old'), 'old');
    fs.writeFileSync(path.join(lower, 'kept'), 'kept');
    const upper = layerDir();
    const r = await applyTar(
      archive([
        { name: '.wh.gone', type: 'file', body: '' },
        { name: 'dir/.wh..wh..opq', type: 'file', body: '' },
        { name: 'dir/new', type: 'file', body: 'new' },
      ]),
      upper,
      { idMapBase: BASE, idMapSize: 65536, whiteouts: true },
    );
    assert.deepEqual([r.whiteouts, r.opaques], [1, 1]);
    const wo = fs.lstatSync(path.join(upper, 'gone'));
    assert.ok(wo.isCharacterDevice() && wo.rdev === 0, 'a 0/0 character device');
    const merged = path.join(root, 'merged');
    fs.mkdirSync(merged);
    execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${upper}:${lower}`, merged]);
    try {
      assert.equal(fs.existsSync(path.join(merged, 'gone')), false);
      assert.deepEqual(fs.readdirSync(path.join(merged, 'dir')), ['new']);
      assert.equal(fs.readFileSync(path.join(merged, 'kept'), 'utf8'), 'kept');
    } finally {
      execFileSync('umount', [merged]);
    }
  });
});
