import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, beforeEach, afterEach, test } from 'node:test';
import { NotFoundError, RuntimeError } from '../../../src/errors/index.js';
import { TemplateService } from '../../../src/templates/index.js';
import type { BuildProgress, TemplateDefinition } from '../../../src/templates/types.js';
import { isRoot, tempData, type TempData } from './helpers.js';

const BASE = 100000;
const skip = !isRoot && 'needs root (chown)';

/** A definition that writes one file and counts its builds. */
function fakeDef(name: string, opts: { delayMs?: number; fail?: string } = {}) {
  const def = {
    name,
    description: `fake ${name}`,
    builds: 0,
    dirs: [] as string[],
    async build(dir: string, onProgress: (p: BuildProgress) => void, signal?: AbortSignal): Promise<void> {
      def.builds++;
      def.dirs.push(dir);
      onProgress({ phase: 'working', fraction: 0.5 });
      fs.writeFileSync(path.join(dir, 'marker'), `build ${def.builds}`);
      fs.mkdirSync(path.join(dir, 'etc'));
      if (opts.delayMs) {
        await new Promise<void>((resolve, reject) => {
          if (signal?.aborted) return reject(signal.reason);
          const timer = setTimeout(resolve, opts.delayMs);
          signal?.addEventListener('abort', () => {
            clearTimeout(timer);
            reject(signal.reason);
          });
        });
      }
      if (opts.fail) throw new Error(opts.fail);
    },
  } satisfies TemplateDefinition & { builds: number; dirs: string[] };
  return def;
}

let t: TempData;
beforeEach(() => {
  t = tempData();
});
afterEach(() => t.cleanup());
after(() => {});

test('concurrent ensure() calls share one build', { skip }, async () => {
  const def = fakeDef('slow', { delayMs: 100 });
  const svc = new TemplateService({ db: t.db, paths: t.paths, idMapBase: BASE, definitions: [def] });
  const seenA: BuildProgress[] = [];
  const seenB: BuildProgress[] = [];
  const [a, b] = await Promise.all([svc.ensure('slow', (p) => seenA.push(p)), svc.ensure('slow', (p) => seenB.push(p))]);
  assert.equal(def.builds, 1);
  assert.equal(a, t.paths.templateRootfs('slow'));
  assert.equal(b, a);
  assert.equal(fs.readFileSync(path.join(a, 'marker'), 'utf8'), 'build 1');
  assert.equal(fs.statSync(a).uid, BASE);
  // Both callers saw the end of the build.
  assert.equal(seenA.at(-1)?.phase, 'ready');
  assert.equal(seenB.at(-1)?.phase, 'ready');
  // And a later call does not build again.
  await svc.ensure('slow');
  assert.equal(def.builds, 1);
});

test('unknown template -> NotFoundError listing the known names', { skip }, async () => {
  const svc = new TemplateService({ db: t.db, paths: t.paths, idMapBase: BASE, definitions: [fakeDef('one'), fakeDef('two')] });
  await assert.rejects(svc.ensure('nope'), (e: unknown) => {
    assert.ok(e instanceof NotFoundError);
    assert.match(e.message, /nope/);
    assert.match(e.message, /one, two/);
    return true;
  });
  assert.throws(() => svc.get('nope'), NotFoundError);
  await assert.rejects(svc.build('nope', { force: true }), NotFoundError);
});

test('list() shows every definition with its status', { skip }, async () => {
  const good = fakeDef('good');
  const bad = fakeDef('bad', { fail: 'disk on fire' });
  const idle = fakeDef('idle');
  const svc = new TemplateService({ db: t.db, paths: t.paths, idMapBase: BASE, definitions: [good, bad, idle] });
  assert.deepEqual(svc.list().map((i) => [i.name, i.status]), [['good', 'missing'], ['bad', 'missing'], ['idle', 'missing']]);
  await svc.ensure('good');
  await assert.rejects(svc.ensure('bad'));
  const list = svc.list();
  assert.deepEqual(list.map((i) => [i.name, i.status]), [['good', 'ready'], ['bad', 'failed'], ['idle', 'missing']]);
  assert.equal(list[0]!.description, 'fake good');
  assert.ok(list[0]!.sizeBytes! > 0);
  assert.match(list[1]!.error ?? '', /disk on fire/);
  // Shown as building while a build runs.
  const slowSvc = new TemplateService({ db: t.db, paths: t.paths, idMapBase: BASE, definitions: [fakeDef('idle', { delayMs: 50 })] });
  const p = slowSvc.ensure('idle');
  assert.equal(slowSvc.get('idle').status, 'building');
  await p;
  assert.equal(slowSvc.get('idle').status, 'ready');
});

test('a failed build is recorded and its temp dir removed', { skip }, async () => {
  const def = fakeDef('broken', { fail: 'no space left' });
  const svc = new TemplateService({ db: t.db, paths: t.paths, idMapBase: BASE, definitions: [def] });
  await assert.rejects(svc.ensure('broken'), (e: unknown) => {
    assert.ok(e instanceof RuntimeError);
    assert.match(e.message, /broken/);
    assert.match(e.message, /no space left/);
    return true;
  });
  assert.equal(def.dirs.length, 1);
  assert.match(path.basename(def.dirs[0]!), /^rootfs\.tmp-/);
  assert.equal(fs.existsSync(def.dirs[0]!), false, 'temp dir removed');
  assert.deepEqual(fs.readdirSync(path.join(t.paths.templates, 'broken')), []);
  const row = t.db.prepare('SELECT status, error FROM templates WHERE name = ?').get('broken') as { status: string; error: string };
  assert.equal(row.status, 'failed');
  assert.match(row.error, /no space left/);
  // A failed template is retried on the next ensure().
  await assert.rejects(svc.ensure('broken'));
  assert.equal(def.builds, 2);
});

test('forced rebuild keeps the old tree aside; pruneOld removes unused ones', { skip }, async () => {
  const def = fakeDef('tpl');
  const svc = new TemplateService({ db: t.db, paths: t.paths, idMapBase: BASE, definitions: [def] });
  const rootfs = await svc.ensure('tpl');
  const firstBuiltAt = svc.get('tpl').builtAt!;
  await new Promise((r) => setTimeout(r, 5));
  await svc.build('tpl', { force: true });
  assert.equal(def.builds, 2);
  assert.equal(fs.readFileSync(path.join(rootfs, 'marker'), 'utf8'), 'build 2');
  const old = path.join(t.paths.templates, 'tpl', `old-${firstBuiltAt}`);
  assert.equal(fs.readFileSync(path.join(old, 'marker'), 'utf8'), 'build 1');
  assert.equal(svc.rootfsForBuild('tpl', firstBuiltAt), old);
  assert.equal(svc.rootfsForBuild('tpl', svc.get('tpl').builtAt!), rootfs);

  // In use: kept. Not in use: removed.
  assert.deepEqual(await svc.pruneOld(() => true), []);
  assert.ok(fs.existsSync(old));
  const asked: Array<number | undefined> = [];
  assert.deepEqual(await svc.pruneOld((_p, info) => (asked.push(info.builtAt), false)), [old]);
  assert.deepEqual(asked, [firstBuiltAt]);
  assert.equal(fs.existsSync(old), false);
  // Non-forced build of a ready template is a no-op.
  await svc.build('tpl');
  assert.equal(def.builds, 2);
});

test('a failed forced rebuild leaves the previous tree in service', { skip }, async () => {
  let fail = false;
  const def: TemplateDefinition = {
    name: 'flaky',
    description: 'fails on demand',
    async build(dir) {
      fs.writeFileSync(path.join(dir, 'f'), 'x');
      if (fail) throw new Error('mirror down');
    },
  };
  const svc = new TemplateService({ db: t.db, paths: t.paths, idMapBase: BASE, definitions: [def] });
  const rootfs = await svc.ensure('flaky');
  fail = true;
  await assert.rejects(svc.build('flaky', { force: true }), /mirror down/);
  const info = svc.get('flaky');
  assert.equal(info.status, 'ready');
  assert.match(info.error ?? '', /mirror down/);
  assert.ok(fs.existsSync(path.join(rootfs, 'f')));
  assert.equal(await svc.ensure('flaky'), rootfs);
});

test('aborting the only waiter stops waiting; the build goes on and a later caller gets it', { skip }, async () => {
  const def = fakeDef('long', { delayMs: 300 });
  const svc = new TemplateService({ db: t.db, paths: t.paths, idMapBase: BASE, definitions: [def] });
  const ac = new AbortController();
  const p = svc.ensure('long', undefined, ac.signal);
  setTimeout(() => ac.abort(), 30);
  const started = Date.now();
  await assert.rejects(p);
  assert.ok(Date.now() - started < 250, 'the caller is released at once');
  assert.equal(svc.get('long').status, 'building');
  // A retry joins the same build rather than starting over.
  assert.equal(await svc.ensure('long'), t.paths.templateRootfs('long'));
  assert.equal(def.builds, 1);
  assert.equal(svc.get('long').status, 'ready');
});

test('close() cancels running builds and cleans up', { skip }, async () => {
  const def = fakeDef('closing', { delayMs: 5000 });
  const svc = new TemplateService({ db: t.db, paths: t.paths, idMapBase: BASE, definitions: [def] });
  const p = svc.ensure('closing');
  await new Promise((r) => setTimeout(r, 30));
  const started = Date.now();
  await svc.close();
  assert.ok(Date.now() - started < 2000);
  await assert.rejects(p);
  const info = svc.get('closing');
  assert.equal(info.status, 'failed');
  assert.match(info.error ?? '', /cancelled|shutting down/);
  assert.deepEqual(fs.readdirSync(path.join(t.paths.templates, 'closing')), []);
});

// Under load close() could land while the build was still making its directories: the build then started
// with a cancelled signal and ran to its end (5 s here) before close() returned.
test('close() while the build is still being set up never starts it', { skip }, async () => {
  const def = fakeDef('early', { delayMs: 5000 });
  const svc = new TemplateService({ db: t.db, paths: t.paths, idMapBase: BASE, definitions: [def] });
  const p = svc.ensure('early');
  await svc.close();
  await assert.rejects(p);
  assert.equal(def.builds, 0);
  assert.equal(svc.get('early').status, 'failed');
  assert.deepEqual(fs.readdirSync(path.join(t.paths.templates, 'early')), []);
});

test('aborting one of two waiters does not cancel the shared build', { skip }, async () => {
  const def = fakeDef('shared', { delayMs: 150 });
  const svc = new TemplateService({ db: t.db, paths: t.paths, idMapBase: BASE, definitions: [def] });
  const ac = new AbortController();
  const a = svc.ensure('shared', undefined, ac.signal);
  const b = svc.ensure('shared');
  ac.abort();
  await assert.rejects(a);
  assert.equal(await b, t.paths.templateRootfs('shared'));
  assert.equal(def.builds, 1);
});

test('recover() resets interrupted builds and removes leftover temp dirs', { skip }, async () => {
  const def = fakeDef('crashed');
  const ready = fakeDef('fine');
  const svc = new TemplateService({ db: t.db, paths: t.paths, idMapBase: BASE, definitions: [def, ready] });
  await svc.ensure('fine');
  // Simulate a daemon killed mid-build: a 'building' row and a temp dir.
  t.db.prepare(`INSERT INTO templates (name, status, rootfs) VALUES ('crashed', 'building', ?)`).run(t.paths.templateRootfs('crashed'));
  const leftover = path.join(t.paths.templates, 'crashed', 'rootfs.tmp-abc123');
  fs.mkdirSync(path.join(leftover, 'usr'), { recursive: true });
  // And a ready template whose tree was deleted by hand.
  fs.rmSync(t.paths.templateRootfs('fine'), { recursive: true });

  const fresh = new TemplateService({ db: t.db, paths: t.paths, idMapBase: BASE, definitions: [def, ready] });
  const r = await fresh.recover();
  assert.deepEqual(r.removedTemp, [leftover]);
  assert.deepEqual(r.reset.sort(), ['crashed', 'fine']);
  assert.equal(fs.existsSync(leftover), false);
  assert.equal(fresh.get('crashed').status, 'failed');
  assert.match(fresh.get('crashed').error ?? '', /interrupted/);
  assert.equal(fresh.get('fine').status, 'missing');
  // Both build again on demand.
  await fresh.ensure('crashed');
  await fresh.ensure('fine');
  assert.deepEqual(fresh.list().map((i) => i.status), ['ready', 'ready']);
});
