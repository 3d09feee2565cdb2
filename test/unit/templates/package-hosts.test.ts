import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { aptSourceUrls, egressRulesFor, packageHosts } from '../../../src/templates/package-hosts.js';

test('egress rules: host and port per http(s) URL, deduplicated; other schemes skipped', () => {
  assert.deepEqual(
    egressRulesFor(['http://deb.debian.org/debian', 'http://deb.debian.org/debian-security', 'https://Mirror.Example:8443/x', 'file:/srv/repo', 'not a url']),
    ['deb.debian.org:80', 'mirror.example:8443'],
  );
  assert.deepEqual(egressRulesFor(['https://registry.npmjs.org/']), ['registry.npmjs.org:443']);
});

test('apt sources: one-line and deb822 files, enabled deb entries only', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-apt-'));
  try {
    fs.mkdirSync(path.join(dir, 'sources.list.d'));
    fs.writeFileSync(path.join(dir, 'sources.list'), 'deb http://a.example/debian bookworm main\ndeb-src http://src.example/debian bookworm main\n# deb http://commented.example/ x y\n');
    fs.writeFileSync(path.join(dir, 'sources.list.d', 'b.sources'), 'Types: deb\nURIs: http://b.example/debian\nSuites: bookworm\nComponents: main\n\nTypes: deb\nEnabled: no\nURIs: http://off.example/\nSuites: x\nComponents: main\n');
    fs.writeFileSync(path.join(dir, 'sources.list.d', 'c.list.disabled'), 'deb http://ignored.example/ x main\n');
    assert.deepEqual(await aptSourceUrls(dir), ['http://a.example/debian', 'http://b.example/debian']);
    const hosts = await packageHosts({ aptDir: dir, npmRegistry: 'http://npm.local:4873/' });
    assert.deepEqual(hosts, { apt: ['a.example:80', 'b.example:80'], npm: ['npm.local:4873'] });
    // A host with no sources at all falls back to the Debian CDN.
    assert.deepEqual((await packageHosts({ aptDir: path.join(dir, 'none') })).apt, ['deb.debian.org:80']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
