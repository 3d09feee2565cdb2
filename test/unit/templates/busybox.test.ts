import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { busyboxTemplate, TemplateService } from '../../../src/templates/index.js';
import { isRoot, tempData, unshifted, type TempData } from './helpers.js';

const BASE = 100000;
const haveBusybox = fs.existsSync('/bin/busybox');
const skip = !isRoot ? 'needs root (chown)' : !haveBusybox ? 'needs /bin/busybox (apt-get install busybox-static)' : false;

let t: TempData;
before(() => {
  t = tempData();
});
after(() => t.cleanup());

test('busybox template builds a small shifted rootfs', { skip }, async () => {
  const svc = new TemplateService({ db: t.db, paths: t.paths, idMapBase: BASE, definitions: [busyboxTemplate] });
  const phases: string[] = [];
  const started = performance.now();
  const rootfs = await svc.ensure('busybox', (p) => phases.push(p.phase));
  const ms = performance.now() - started;
  console.log(`busybox template built in ${ms.toFixed(0)} ms`);
  assert.equal(rootfs, t.paths.templateRootfs('busybox'));
  assert.ok(ms < 5000, `build took ${ms} ms`);
  assert.ok(phases.includes('ready'), `phases: ${phases.join(',')}`);

  const bb = fs.lstatSync(path.join(rootfs, 'bin/busybox'));
  assert.ok(bb.isFile() && (bb.mode & 0o111) !== 0);
  for (const link of ['bin/sh', 'bin/ls', 'usr/bin/env', 'bin/env']) {
    const p = path.join(rootfs, link);
    assert.ok(fs.lstatSync(p).isSymbolicLink(), `${link} is a symlink`);
    assert.equal(fs.realpathSync(p), fs.realpathSync(path.join(rootfs, 'bin/busybox')), `${link} resolves to busybox`);
  }
  const passwd = fs.readFileSync(path.join(rootfs, 'etc/passwd'), 'utf8');
  assert.match(passwd, /^root:x:0:0:/m);
  assert.match(passwd, /^user:x:1000:1000:[^:]*:\/home\/user:/m);
  assert.match(fs.readFileSync(path.join(rootfs, 'etc/group'), 'utf8'), /^user:x:1000:/m);
  assert.ok(fs.readFileSync(path.join(rootfs, 'etc/hostname'), 'utf8').trim().length > 0);
  for (const d of ['home/user', 'root', 'tmp', 'proc', 'sys', 'dev', 'run', 'var/tmp', '.capsule']) {
    assert.ok(fs.statSync(path.join(rootfs, d)).isDirectory(), `${d} exists`);
  }
  assert.deepEqual(fs.readdirSync(path.join(rootfs, '.capsule')), []);
  assert.equal(fs.statSync(path.join(rootfs, 'tmp')).mode & 0o7777, 0o1777);
  assert.equal(fs.statSync(path.join(rootfs, 'var/tmp')).mode & 0o7777, 0o1777);

  // Owners: container root -> 100000, user 1000 -> 101000.
  assert.deepEqual(unshifted(rootfs, BASE), []);
  const root = fs.statSync(rootfs);
  assert.equal(root.uid, BASE);
  assert.equal(root.mode & 0o777, 0o755);
  const home = fs.statSync(path.join(rootfs, 'home/user'));
  assert.equal(home.uid, BASE + 1000);
  assert.equal(home.gid, BASE + 1000);

  const info = svc.get('busybox');
  assert.equal(info.status, 'ready');
  assert.ok((info.sizeBytes ?? 0) > 1_000_000, `size ${info.sizeBytes}`);
  assert.ok(info.builtAt && info.builtAt <= Date.now());
  // No temp dirs left next to it.
  assert.deepEqual(fs.readdirSync(path.dirname(rootfs)), ['rootfs']);

  // The tree works as a root: the static busybox runs its shell in a chroot.
  const out = execFileSync('chroot', [rootfs, '/bin/sh', '-c', 'echo hello from $(/usr/bin/env basename /bin/sh)'], { encoding: 'utf8' });
  assert.equal(out.trim(), 'hello from sh');

  // Ready: a second ensure returns at once without rebuilding.
  const again = performance.now();
  assert.equal(await svc.ensure('busybox'), rootfs);
  assert.ok(performance.now() - again < 100);
});
