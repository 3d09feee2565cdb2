import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { DebootstrapProgressParser, findMirror, parseDeb822, parseSourcesList } from '../../../src/templates/debian.js';
import type { BuildProgress } from '../../../src/templates/types.js';

test('debootstrap output becomes monotonic progress', () => {
  const seen: BuildProgress[] = [];
  const parser = new DebootstrapProgressParser((p) => seen.push(p));
  const pkgs = Array.from({ length: 100 }, (_, i) => `pkg${i}`);
  const lines = [
    'I: Retrieving InRelease ',
    'I: Checking Release signature',
    'I: Retrieving Packages ',
    'I: Validating Packages ',
    'I: Resolving dependencies of required packages...',
    ...pkgs.flatMap((p) => [`I: Retrieving ${p} 1.0`, `I: Validating ${p} 1.0`]),
    'I: Chosen extractor for .deb packages: dpkg-deb',
    ...pkgs.slice(0, 80).map((p) => `I: Extracting ${p}...`),
    'I: Installing core packages...',
    ...pkgs.map((p) => `I: Unpacking ${p}...`),
    ...pkgs.map((p) => `I: Configuring ${p}...`),
    'I: Unpacking the base system...',
    'I: Base system installed successfully.',
  ];
  for (const l of lines) parser.line(l);
  const phases = [...new Set(seen.map((p) => p.phase))];
  assert.deepEqual(phases, ['resolving', 'downloading', 'extracting', 'unpacking', 'configuring']);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i]!.fraction! >= seen[i - 1]!.fraction!, `fraction goes back at ${i}`);
  assert.ok(seen.at(-1)!.fraction! >= 0.9 && seen.at(-1)!.fraction! < 1);
  assert.equal(seen.find((p) => p.phase === 'downloading')?.message, 'pkg0');
});

test('apt sources: one-line and deb822 formats', async () => {
  assert.deepEqual(parseSourcesList('# c\ndeb [arch=amd64] http://m.example/debian bookworm main contrib\n'), [
    { types: ['deb'], uris: ['http://m.example/debian'], suites: ['bookworm'], components: ['main', 'contrib'] },
  ]);
  const d = parseDeb822('Types: deb deb-src\nURIs: http://a/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nEnabled: no\nTypes: deb\nURIs: http://b\nSuites: bookworm\nComponents: main\n');
  assert.equal(d.length, 1);
  assert.deepEqual(d[0]!.suites, ['bookworm', 'bookworm-updates']);

  const apt = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-apt-'));
  try {
    assert.equal(await findMirror('bookworm', apt), 'http://deb.debian.org/debian');
    fs.mkdirSync(path.join(apt, 'sources.list.d'));
    fs.writeFileSync(path.join(apt, 'sources.list.d', 'a.sources'), 'Types: deb\nURIs: http://sec/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb\nURIs: http://mirror.local/debian/\nSuites: bookworm\nComponents: main\n');
    assert.equal(await findMirror('bookworm', apt), 'http://mirror.local/debian');
    fs.writeFileSync(path.join(apt, 'sources.list'), 'deb http://first/debian bookworm main\n');
    assert.equal(await findMirror('bookworm', apt), 'http://first/debian');
    // No source names trixie: the mirror of a plain release suite serves it, never the security archive.
    assert.equal(await findMirror('trixie', apt), 'http://first/debian');
    fs.rmSync(path.join(apt, 'sources.list'));
    assert.equal(await findMirror('trixie', apt), 'http://mirror.local/debian');
    fs.writeFileSync(path.join(apt, 'sources.list.d', 'a.sources'), 'Types: deb\nURIs: http://sec/debian-security\nSuites: bookworm-security\nComponents: main\n');
    assert.equal(await findMirror('trixie', apt), 'http://deb.debian.org/debian');
  } finally {
    fs.rmSync(apt, { recursive: true, force: true });
  }
});

test('a missing debootstrap says how to install it', { skip: process.getuid?.() !== 0 && 'needs root' }, async () => {
  const { createDebianTemplate } = await import('../../../src/templates/debian.js');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-nodbs-'));
  try {
    const def = createDebianTemplate({ debootstrap: '/nonexistent/debootstrap', cacheDir: null, mirror: 'http://127.0.0.1:9/debian' });
    await assert.rejects(def.build(dir, () => {}), /apt-get install debootstrap/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
