/** The layer store on a real SQLite file and real directories: drafts, commits, cache hits, pruning, recovery. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { openDb } from '../../../src/store/db.js';
import { canonicalJson, LayerStore, layerDigest } from '../../../src/layers/store.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-layers-'));
const db = openDb(path.join(dir, 'capsule.db'));
const store = new LayerStore(db, path.join(dir, 'layers'));
after(() => {
  db.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('LayerStore', () => {
  it('hashes keys independently of property order', () => {
    assert.equal(canonicalJson({ b: 1, a: [{ d: 2, c: 3 }] }), '{"a":[{"c":3,"d":2}],"b":1}');
    assert.equal(layerDigest({ x: 1, y: 'z' }), layerDigest({ y: 'z', x: 1 }));
    assert.notEqual(layerDigest({ x: 1 }), layerDigest({ x: 2 }));
    assert.match(layerDigest('a'), /^sha256:[0-9a-f]{64}$/);
  });

  it('commits a draft under its digest, with size and entries; a second commit of the same digest keeps the first', async () => {
    const d = await store.draft();
    fs.mkdirSync(path.join(d.dir, 'etc'));
    fs.writeFileSync(path.join(d.dir, 'etc', 'a'), 'x'.repeat(10_000));
    const digest = layerDigest({ step: 'one' });
    const rec = await d.commit({ digest, parent: null, kind: 'step', description: 'run: one' });
    assert.equal(rec.entries, 2);
    assert.ok(rec.sizeBytes >= 10_000);
    assert.ok(store.has(digest));
    assert.equal(fs.readFileSync(path.join(store.path(digest), 'etc', 'a'), 'utf8').length, 10_000);
    const again = await store.draft();
    fs.writeFileSync(path.join(again.dir, 'other'), 'y');
    await again.commit({ digest, parent: null, kind: 'step', description: 'run: one' });
    assert.equal(fs.existsSync(path.join(store.path(digest), 'other')), false, 'the first tree stays');
    assert.equal(fs.readdirSync(store.root).filter((e) => e.startsWith('.tmp-')).length, 0, 'no draft left');
  });

  it('prunes what nothing references or uses, and keeps the rest', async () => {
    const mk = async (name: string) => {
      const d = await store.draft();
      fs.writeFileSync(path.join(d.dir, name), name);
      return (await d.commit({ digest: layerDigest({ name }), parent: null, kind: 'step', description: name })).digest;
    };
    const kept = await mk('kept');
    const used = await mk('used');
    const free = await mk('free');
    const removed = await store.prune(new Set([kept]), (p) => p === store.path(used));
    assert.ok(removed.includes(free));
    assert.ok(!removed.includes(kept) && !removed.includes(used));
    assert.equal(store.has(free), false);
    assert.equal(fs.existsSync(store.path(free)), false);
  });

  it('recover() removes drafts cut off by a restart and rows without trees', async () => {
    const d = await store.draft();
    fs.writeFileSync(path.join(d.dir, 'half'), 'x');
    const digest = layerDigest({ name: 'vanishing' });
    const v = await store.draft();
    await v.commit({ digest, parent: null, kind: 'step', description: 'v' });
    fs.rmSync(store.path(digest), { recursive: true });
    const r = await store.recover();
    assert.equal(r.removedDrafts.length, 1);
    assert.deepEqual(r.droppedRows, [digest]);
    assert.equal(store.get(digest), undefined);
    assert.equal(fs.existsSync(d.dir), false);
  });

  it('refuses what is not a digest', () => {
    assert.throws(() => store.path('../../etc'), (e: any) => e.code === 'invalid_argument');
  });
});
