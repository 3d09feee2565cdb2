/**
 * Builds the debian template for real (debootstrap, ~1 min the first time).
 * Set CAPSULE_TEMPLATE_CACHE=/var/cache/capsule-test to keep the result
 * between runs; without it a temp cache is used and deleted at the end.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { dataPaths } from '../../../src/config/index.js';
import { openDb } from '../../../src/store/db.js';
import { createDebianTemplate, TEMPLATE_CACHE_ENV, TemplateService } from '../../../src/templates/index.js';
import { mountsBelow } from '../../../src/templates/fsutil.js';
import type { BuildProgress } from '../../../src/templates/types.js';

const BASE = 100000;
const isRoot = process.getuid?.() === 0;
const haveDebootstrap = spawnSync('sh', ['-c', 'command -v debootstrap'], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } }).status === 0;
const skip = !isRoot ? 'needs root' : !haveDebootstrap ? 'needs debootstrap (apt-get install debootstrap)' : false;

const sharedCache = process.env[TEMPLATE_CACHE_ENV];
let cacheDir: string;
let dataDir: string;
let tempCache = false;

before(() => {
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-debian-'));
  if (sharedCache) {
    cacheDir = sharedCache;
  } else {
    cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-tplcache-'));
    tempCache = true;
  }
  process.env[TEMPLATE_CACHE_ENV] = cacheDir;
});

after(() => {
  fs.rmSync(dataDir, { recursive: true, force: true });
  if (tempCache) fs.rmSync(cacheDir, { recursive: true, force: true });
  if (sharedCache === undefined) delete process.env[TEMPLATE_CACHE_ENV];
});

function mb(bytes: number | undefined): string {
  return `${((bytes ?? 0) / 1e6).toFixed(1)} MB`;
}

test('debian template: debootstrap + python3, shifted, cached', { skip, timeout: 10 * 60_000 }, async () => {
  const paths = dataPaths(path.join(dataDir, 'data'));
  const db = openDb(paths.db);
  try {
    const svc = new TemplateService({ db, paths, idMapBase: BASE });
    const phases = new Set<string>();
    let lastFraction = 0;
    const cached = fs.existsSync(path.join(cacheDir, 'debian-rootfs.tar'));
    const t0 = performance.now();
    const rootfs = await svc.ensure('debian', (p: BuildProgress) => {
      phases.add(p.phase);
      if (p.fraction !== undefined) {
        assert.ok(p.fraction >= lastFraction - 1e-9, `progress went back: ${lastFraction} -> ${p.fraction} (${p.phase})`);
        lastFraction = p.fraction;
      }
    });
    const secs = (performance.now() - t0) / 1000;
    const info = svc.get('debian');
    console.log(`debian template: ${cached ? 'from cache' : 'debootstrap'} in ${secs.toFixed(1)} s, ${mb(info.sizeBytes)}; phases: ${[...phases].join(' > ')}`);
    assert.equal(info.status, 'ready');
    assert.equal(lastFraction, 1);
    if (!cached) {
      for (const ph of ['downloading', 'unpacking', 'configuring', 'shifting ownership', 'ready']) assert.ok(phases.has(ph), `phase ${ph}`);
    }

    // python3 is there and runs.
    const py = path.join(rootfs, 'usr/bin/python3');
    assert.ok(fs.lstatSync(py));
    const out = execFileSync('chroot', [rootfs, '/usr/bin/python3', '-c', 'import sys; print(sys.version_info[0] * 100 + sys.version_info[1])'], {
      encoding: 'utf8',
    });
    assert.ok(Number(out.trim()) >= 311, `python version ${out}`);

    // Owners are shifted everywhere, setuid bits survived, user and /.capsule exist.
    let bad = 0;
    let entries = 0;
    const walk = (p: string): void => {
      const st = fs.lstatSync(p);
      entries++;
      if (st.uid < BASE || st.gid < BASE) bad++;
      if (st.isDirectory()) for (const e of fs.readdirSync(p)) walk(path.join(p, e));
    };
    walk(rootfs);
    assert.equal(bad, 0, 'entries not shifted');
    console.log(`debian template: ${entries} entries, all owned by ids >= ${BASE}`);
    assert.equal(fs.statSync(rootfs).uid, BASE);
    assert.equal(fs.statSync(path.join(rootfs, 'usr/bin/passwd')).mode & 0o4000, 0o4000, 'setuid kept on passwd');
    assert.equal(fs.statSync(path.join(rootfs, 'home/user')).uid, BASE + 1000);
    assert.match(fs.readFileSync(path.join(rootfs, 'etc/passwd'), 'utf8'), /^user:x:1000:1000:[^:]*:\/home\/user:/m);
    assert.ok(fs.statSync(path.join(rootfs, '.capsule')).isDirectory());
    assert.deepEqual(fs.readdirSync(path.join(rootfs, 'var/cache/apt/archives')).filter((f) => f.endsWith('.deb')), []);
    assert.deepEqual(fs.readdirSync(path.join(rootfs, 'var/lib/apt/lists')).filter((f) => f !== 'partial' && f !== 'lock'), []);
    assert.deepEqual(await mountsBelow(paths.templates), [], 'no mounts left behind');

    // The cache holds the tree now; a forced rebuild uses it and keeps the old tree aside.
    assert.ok(fs.existsSync(path.join(cacheDir, 'debian-rootfs.tar')), 'saved to cache');
    const firstBuiltAt = info.builtAt!;
    const t1 = performance.now();
    const rebuilt = await svc.build('debian', { force: true });
    console.log(`debian template: forced rebuild from cache in ${((performance.now() - t1) / 1000).toFixed(1)} s`);
    assert.equal(rebuilt, rootfs);
    assert.ok(fs.existsSync(path.join(rootfs, 'usr/bin/python3')));
    assert.equal(fs.statSync(path.join(rootfs, 'usr/bin/passwd')).uid, BASE);
    const old = svc.rootfsForBuild('debian', firstBuiltAt);
    assert.ok(fs.existsSync(path.join(old, 'usr/bin/python3')), 'old tree kept aside');
    assert.deepEqual(await svc.pruneOld(() => false), [old]);
  } finally {
    db.close();
  }
});

test('debian template: closing the service kills debootstrap and cleans up', { skip, timeout: 2 * 60_000 }, async () => {
  const paths = dataPaths(path.join(dataDir, 'abort'));
  const db = openDb(paths.db);
  try {
    // No cache here, so debootstrap really runs.
    const svc = new TemplateService({ db, paths, idMapBase: BASE, definitions: [createDebianTemplate({ cacheDir: null })] });
    let sawDownload = false;
    const p = svc.ensure(
      'debian',
      (pr) => {
        if (pr.phase === 'downloading' && !sawDownload) {
          sawDownload = true;
          setTimeout(() => void svc.close(), 500);
        }
      },
    );
    const timer = setTimeout(() => void svc.close(), 30_000); // in case the mirror is slow to answer
    await assert.rejects(p);
    clearTimeout(timer);
    // The caller is released at once; the build's cleanup follows.
    for (let i = 0; i < 200 && svc.get('debian').status === 'building'; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(svc.get('debian').status, 'failed');
    assert.deepEqual(fs.readdirSync(path.join(paths.templates, 'debian')), [], 'temp dir removed');
    const left = spawnSync('pgrep', ['-f', `debootstrap.*${paths.templates}`], { encoding: 'utf8' }).stdout.trim();
    assert.equal(left, '', 'no debootstrap left running');
    assert.deepEqual(await mountsBelow(paths.templates), []);
  } finally {
    db.close();
  }
});
