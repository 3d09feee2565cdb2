/** Which directories on the way to the data dir the sandboxes' mapped root may not search. */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { checkDataDir, untraversable } from '../../../src/runtime/doctor-datadir.js';

const ID = 100000;
const isRoot = process.getuid?.() === 0;

describe('data dir reachability', () => {
  let base: string;
  before(() => {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-reach-'));
    fs.chmodSync(base, 0o755);
  });
  after(() => fs.rmSync(base, { recursive: true, force: true }));

  const dir = (name: string, mode: number, owner?: [number, number]) => {
    const d = path.join(base, name);
    fs.mkdirSync(d);
    if (owner) fs.chownSync(d, ...owner);
    fs.chmodSync(d, mode);
    return d;
  };

  it('a 0700 directory of someone else blocks; the message names it and the fix', () => {
    const locked = dir('locked', 0o700);
    const target = path.join(locked, 'data');
    assert.deepEqual(untraversable(target, ID, ID).map((b) => b.dir), [locked]);
    const c = checkDataDir(target, ID);
    assert.equal(c.ok, false);
    assert.match(c.message, new RegExp(`cannot reach ${target}.*${locked} \\(mode 0700`));
    assert.match(c.fix!, new RegExp(`chmod o\\+x ${locked} .*--data-dir /var/lib/capsule`));
  });

  it('o+x is enough (search, not read); a missing tail is fine', () => {
    const open = dir('passable', 0o711);
    assert.deepEqual(untraversable(path.join(open, 'not', 'made', 'yet'), ID, ID), []);
    const c = checkDataDir(path.join(open, 'data'), ID);
    assert.equal(c.ok, true, c.message);
    assert.match(c.message, /not made yet/);
  });

  it('the data dir itself is not judged: the daemon makes it searchable', () => {
    const d = dir('own-0700', 0o700);
    assert.equal(checkDataDir(d, ID).ok, true);
  });

  it('owner and group bits count when the mapped ids own the directory', { skip: !isRoot && 'needs root to chown (run the suite as root)' }, () => {
    const owned = dir('owned', 0o700, [ID, 0]);
    assert.deepEqual(untraversable(path.join(owned, 'x'), ID, ID), [], 'owner x bit');
    const group = dir('group', 0o710, [0, ID]);
    assert.deepEqual(untraversable(path.join(group, 'x'), ID, ID), [], 'group x bit');
    // Owner bits decide for the owner even when "other" would allow it, as the kernel does.
    const ownerNoX = dir('owner-no-x', 0o601, [ID, 0]);
    assert.deepEqual(untraversable(path.join(ownerNoX, 'x'), ID, ID).map((b) => b.dir), [ownerNoX]);
    const c = checkDataDir(path.join(ownerNoX, 'data'), ID);
    assert.match(c.fix!, new RegExp(`chmod u\\+x ${ownerNoX}`));
  });
});
