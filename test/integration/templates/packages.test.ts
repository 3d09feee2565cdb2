/**
 * Package steps in template builds: an apt step reaches the host's Debian
 * mirror through the build sandbox's egress allowlist and nothing else. The
 * mirror is a loopback HTTP server standing in for deb.debian.org (the
 * simulated internet, test/helpers/internet.ts): no packet leaves 127.0.0.0/8.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { api, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';
import { startInternet, type Internet } from '../../helpers/internet.js';
import { sha, tarOf } from '../../helpers/images.js';

const MIRROR = { name: 'deb.debian.org', address: '203.0.113.21', loopback: '127.0.0.21' };

let d: TestDaemon;
let web: Internet;
let mirror: http.Server;
let hits: string[] = [];

/** A one-package flat repository whose package installs /usr/bin/capsule-hello. */
function buildRepo(): Map<string, Buffer> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-deb-'));
  try {
    fs.mkdirSync(path.join(dir, 'pkg/DEBIAN'), { recursive: true });
    fs.mkdirSync(path.join(dir, 'pkg/usr/bin'), { recursive: true });
    const control = 'Package: capsule-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: Capsule tests <tests@capsule.invalid>\nDescription: a package for template tests\n';
    fs.writeFileSync(path.join(dir, 'pkg/DEBIAN/control'), control);
    fs.writeFileSync(path.join(dir, 'pkg/usr/bin/capsule-hello'), '#!/bin/sh\necho hello from a package step\n', { mode: 0o755 });
    execFileSync('dpkg-deb', ['--root-owner-group', '-b', path.join(dir, 'pkg'), path.join(dir, 'hello.deb')], { stdio: 'ignore' });
    const deb = fs.readFileSync(path.join(dir, 'hello.deb'));
    const hex = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');
    const packages = Buffer.from(`${control}Filename: ./capsule-hello_1.0_all.deb\nSize: ${deb.length}\nSHA256: ${hex(deb)}\n\n`);
    const release = Buffer.from(`Origin: capsule-test\nSuite: stable\nCodename: capsule\nDate: ${new Date().toUTCString()}\nSHA256:\n ${hex(packages)} ${packages.length} Packages\n`);
    return new Map([
      ['/capsule/Packages', packages],
      ['/capsule/Release', release],
      ['/capsule/capsule-hello_1.0_all.deb', deb],
    ]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function upload(blob: Buffer): Promise<string> {
  const digest = sha(blob);
  const r = await api(d.url, 'PUT', `/v1/blobs/${digest}`, blob, { 'content-type': 'application/octet-stream' });
  assert.equal(r.status, 201, r.text);
  return digest;
}

async function build(name: string, definition: unknown): Promise<any> {
  const r = await api(d.url, 'POST', '/v1/templates?follow=true', { name, definition });
  assert.equal(r.status, 200, r.text);
  return JSON.parse(r.text.trim().split('\n').pop()!).build;
}

async function sh(id: string, cmd: string): Promise<{ stdout: string; exitCode: number }> {
  const r = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd, user: 'root' });
  assert.equal(r.status, 200, r.text);
  return r.json;
}

describe('package steps in template builds', { timeout: 600_000 }, () => {
  before(async () => {
    web = await startInternet(['other.test']);
    const repo = buildRepo();
    mirror = http.createServer((req, res) => {
      hits.push(`${req.headers.host} ${req.url}`);
      const body = repo.get(path.posix.normalize(req.url ?? ''));
      if (!body) return void res.writeHead(404).end();
      res.writeHead(200, { 'content-length': body.length }).end(req.method === 'HEAD' ? undefined : body);
    });
    await new Promise<void>((r) => mirror.listen(80, MIRROR.loopback, () => r()));
    const env = JSON.parse(web.env) as { hosts: Record<string, string>; routes: Record<string, string> };
    env.hosts[MIRROR.name] = MIRROR.address;
    env.routes[MIRROR.address] = MIRROR.loopback;
    d = await startTestDaemon({ env: { CAPSULE_NET_TEST_INTERNET: JSON.stringify(env) } });
  });
  after(async () => {
    await d?.stop();
    await web?.close();
    await new Promise((r) => mirror?.close(r));
  });

  it('builds a template with one apt package and one copied file; an unchanged rebuild reaches no mirror', async () => {
    const sources = await upload(await tarOf([{ name: 'sources.list', body: `deb [trusted=yes] http://${MIRROR.name}/capsule ./\n` }]));
    const app = await upload(await tarOf([{ name: 'app.txt', body: 'copied\n' }]));
    const definition = {
      from: 'debian',
      steps: [
        { type: 'copy', source: sources, dest: '/etc/apt' },
        { type: 'apt', packages: ['capsule-hello'] },
        { type: 'copy', source: app, dest: '/srv' },
      ],
    };
    hits = [];
    const b = await build('with-package', definition);
    assert.equal(b.status, 'succeeded', JSON.stringify(b));
    assert.ok(hits.some((h) => h === `${MIRROR.name} /capsule/./capsule-hello_1.0_all.deb` || h.endsWith('capsule-hello_1.0_all.deb')), hits.join('\n'));

    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'with-package' });
    assert.equal(r.status, 201, r.text);
    const id = r.json.id as string;
    try {
      const out = await sh(id, 'capsule-hello; cat /srv/app.txt; wc -c < /etc/resolv.conf; ls /var/lib/apt/lists | wc -l');
      assert.equal(out.exitCode, 0, out.stdout);
      // The build's resolver and apt's lists are not part of the template.
      assert.deepEqual(out.stdout.trim().split('\n').map((l) => l.trim()), ['hello from a package step', 'copied', '0', '0']);
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
    }

    hits = [];
    const again = await build('with-package', definition);
    assert.equal(again.cacheHits, 3);
    assert.deepEqual(hits, [], 'a cached apt step reaches no mirror');
  });

  it('an apt step reaches the mirror only: sources naming another host fail the step, and that host sees nothing', async () => {
    const sources = await upload(await tarOf([{ name: 'sources.list', body: 'deb [trusted=yes] http://other.test/x ./\n' }]));
    const b = await build('elsewhere', { from: 'debian', steps: [{ type: 'copy', source: sources, dest: '/etc/apt' }, { type: 'apt', packages: ['capsule-hello'] }] });
    assert.equal(b.status, 'failed');
    assert.match(b.error, /step 2 \(apt/);
    assert.equal(web.sites['other.test']!.hits.http, 0);
  });

  it('a run step has no network, and an npm step on a template without npm says so', async () => {
    const run = await build('no-net', { from: 'busybox', steps: [{ type: 'run', command: `nslookup ${MIRROR.name} || exit 9` }] });
    assert.equal(run.status, 'failed');
    assert.match(run.error, /exited with 9/);
    const npm = await build('no-npm', { from: 'debian', steps: [{ type: 'npm', packages: ['left-pad'], global: true }] });
    assert.equal(npm.status, 'failed');
    assert.match(npm.error, /npm is not in this template/);
  });
});
