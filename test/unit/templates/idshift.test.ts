import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { shiftOwnership } from '../../../src/templates/idshift.js';
import { isRoot } from './helpers.js';

const BASE = 100000;
let work: string;
let tree: string;
let outside: string;

before(() => {
  if (!isRoot) return;
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-idshift-'));
  tree = path.join(work, 'tree');
  outside = path.join(work, 'outside.txt');
  fs.writeFileSync(outside, 'not part of the tree');
  fs.chownSync(outside, 0, 0);
  fs.mkdirSync(path.join(tree, 'usr/bin'), { recursive: true });
  fs.mkdirSync(path.join(tree, 'home/user'), { recursive: true });
  fs.chownSync(path.join(tree, 'home/user'), 1000, 1000);
  fs.writeFileSync(path.join(tree, 'home/user/notes'), 'x');
  fs.chownSync(path.join(tree, 'home/user/notes'), 1000, 1000);
  fs.writeFileSync(path.join(tree, 'usr/bin/su'), '#!/bin/sh\n');
  fs.chmodSync(path.join(tree, 'usr/bin/su'), 0o4755);
  fs.writeFileSync(path.join(tree, 'usr/bin/chage'), '#!/bin/sh\n');
  fs.chownSync(path.join(tree, 'usr/bin/chage'), 0, 42);
  fs.chmodSync(path.join(tree, 'usr/bin/chage'), 0o2755);
  fs.mkdirSync(path.join(tree, 'tmp'));
  fs.chmodSync(path.join(tree, 'tmp'), 0o1777);
  fs.symlinkSync(outside, path.join(tree, 'link-out'));
  fs.symlinkSync('/does/not/exist', path.join(tree, 'dangling'));
  fs.symlinkSync('/', path.join(tree, 'rootlink')); // must not be followed
  // Already shifted entry (a half-done earlier run): stays as it is.
  fs.writeFileSync(path.join(tree, 'done'), '');
  fs.chownSync(path.join(tree, 'done'), BASE + 5, BASE + 5);
});
after(() => {
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

test('shiftOwnership shifts owners, keeps links and setuid bits, and is idempotent', { skip: !isRoot && 'needs root' }, async () => {
  const r = await shiftOwnership(tree, BASE);
  assert.equal(r.entries, 13);
  assert.equal(r.changed, 12);
  assert.equal(r.modesRestored, 2);

  const st = (p: string) => fs.lstatSync(path.join(tree, p));
  assert.equal(st('.').uid, BASE);
  assert.equal(st('usr/bin').gid, BASE);
  assert.equal(st('home/user').uid, BASE + 1000);
  assert.equal(st('home/user/notes').gid, BASE + 1000);
  assert.equal(st('usr/bin/su').uid, BASE);
  assert.equal(st('usr/bin/su').mode & 0o7777, 0o4755, 'setuid restored');
  assert.equal(st('usr/bin/chage').gid, BASE + 42);
  assert.equal(st('usr/bin/chage').mode & 0o7777, 0o2755, 'setgid restored');
  assert.equal(st('tmp').mode & 0o7777, 0o1777);
  assert.equal(st('done').uid, BASE + 5);
  for (const l of ['link-out', 'dangling', 'rootlink']) {
    assert.ok(st(l).isSymbolicLink());
    assert.equal(st(l).uid, BASE, `${l} itself is chowned`);
  }
  const target = fs.lstatSync(outside);
  assert.equal(target.uid, 0, 'symlink target untouched');
  assert.equal(target.gid, 0);
  assert.equal(fs.statSync('/').uid, 0);

  const again = await shiftOwnership(tree, BASE);
  assert.equal(again.changed, 0);
  assert.equal(again.modesRestored, 0);
  assert.equal(st('home/user').uid, BASE + 1000);
  assert.equal(st('usr/bin/su').mode & 0o7777, 0o4755);
});

test('shiftOwnership rejects a non-directory root', { skip: !isRoot && 'needs root' }, async () => {
  await assert.rejects(shiftOwnership(outside, BASE), /not a directory/);
});
