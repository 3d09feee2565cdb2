/**
 * User templates against a real daemon: definitions built into layers in real
 * build sandboxes, the layer cache, failures, OCI image import with whiteouts,
 * tenancy, removal, and a daemon killed in the middle of a build.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { api, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';
import { sha, tarOf, tinyImage, type Entry } from '../../helpers/images.js';

let d: TestDaemon;

async function upload(blob: Buffer, headers: Record<string, string> = {}): Promise<string> {
  const digest = sha(blob);
  const r = await api(d.url, 'PUT', `/v1/blobs/${digest}`, blob, { 'content-type': 'application/octet-stream', ...headers });
  assert.equal(r.status, 201, r.text);
  return digest;
}

/** Start a build and follow it to the end; returns the events and the final build. */
async function build(body: unknown, headers: Record<string, string> = {}): Promise<{ events: any[]; build: any }> {
  const r = await api(d.url, 'POST', '/v1/templates?follow=true', body, headers);
  assert.equal(r.status, 200, r.text);
  const events = r.text
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  const last = events[events.length - 1];
  return { events, build: last.build };
}

async function sandbox(template: string, headers: Record<string, string> = {}): Promise<string> {
  const r = await api(d.url, 'POST', '/v1/sandboxes', { template }, headers);
  assert.equal(r.status, 201, r.text);
  return r.json.id;
}

async function sh(id: string, cmd: string, headers: Record<string, string> = {}): Promise<{ stdout: string; stderr: string; exitCode: number }> {
  const r = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd }, headers);
  assert.equal(r.status, 200, r.text);
  return r.json;
}

const kill = (id: string, headers: Record<string, string> = {}) => api(d.url, 'DELETE', `/v1/sandboxes/${id}`, undefined, headers);

function drafts(dataDir: string): string[] {
  const root = path.join(dataDir, 'layers');
  return fs.existsSync(root) ? fs.readdirSync(root).filter((e) => e.startsWith('.tmp-')) : [];
}

function buildContainers(dataDir: string): string[] {
  const found: string[] = [];
  for (const dir of [path.join(dataDir, 'sandboxes'), path.join(dataDir, 'runtime')]) {
    if (fs.existsSync(dir)) found.push(...fs.readdirSync(dir).filter((e) => e.startsWith('bld-')));
  }
  if (fs.readFileSync('/proc/self/mountinfo', 'utf8').includes('/bld-')) found.push('mount');
  return found;
}

const APP_FILES: Entry[] = [
  { name: 'app', type: 'directory' },
  { name: 'app/main.sh', body: 'echo "main says $GREETING"\n', mode: 0o755 },
  { name: 'app/data.txt', body: 'payload\n' },
];

describe('user templates', () => {
  before(async () => {
    d = await startTestDaemon();
  });
  after(async () => {
    await d?.stop();
  });

  it('builds copy, env, run, workdir and user steps into a template whose sandboxes see all of them', async () => {
    const src = await upload(await tarOf(APP_FILES));
    const definition = {
      from: 'busybox',
      steps: [
        { type: 'copy', source: src, dest: '/opt', owner: 'user' },
        { type: 'env', vars: { GREETING: 'hello' } },
        { type: 'run', command: 'sh /opt/app/main.sh > /built.txt; echo to-stderr >&2' },
        { type: 'workdir', path: '/opt/app' },
        { type: 'user', user: 'user' },
      ],
    };
    const { events, build: b } = await build({ name: 'app-env', definition });
    assert.equal(b.status, 'succeeded', JSON.stringify(events.slice(-3)));
    assert.equal(b.cacheHits, 0);
    assert.ok(events.some((e) => e.type === 'log' && e.data.includes('to-stderr')), 'the step output is streamed');

    const details = await api(d.url, 'GET', '/v1/templates/app-env');
    assert.equal(details.status, 200);
    assert.equal(details.json.status, 'ready');
    assert.deepEqual(details.json.config.env, { GREETING: 'hello' });
    assert.equal(details.json.layers.length, 3, 'base + copy + run');

    const id = await sandbox('app-env');
    try {
      const r = await sh(id, 'pwd; id -u; echo "$GREETING"; cat /built.txt; stat -c %u /opt/app/data.txt');
      assert.equal(r.exitCode, 0, r.stderr);
      assert.deepEqual(r.stdout.trim().split('\n'), ['/opt/app', '1000', 'hello', 'main says hello', '1000']);
      // The build sandboxes' names stay out of the layers (each agent named its own in /etc/hosts); this one is named.
      for (const l of fs.readdirSync(path.join(d.dataDir, 'layers'))) {
        const hosts = path.join(d.dataDir, 'layers', l, 'etc', 'hosts');
        if (fs.existsSync(hosts)) assert.ok(!fs.readFileSync(hosts, 'utf8').includes('# capsule: this sandbox'), `layer ${l}: ${fs.readFileSync(hosts, 'utf8')}`);
      }
      const named = await sh(id, 'grep "# capsule: this sandbox" /etc/hosts');
      assert.equal(named.stdout, `127.0.1.1\t${id}\t# capsule: this sandbox\n`);
      // The template's env is a default: the command's own wins.
      const own = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: 'echo $GREETING', envs: { GREETING: 'mine' } });
      assert.equal(own.json.stdout, 'mine\n');
      // Deleting it while a sandbox uses it is refused.
      const del = await api(d.url, 'DELETE', '/v1/templates/app-env');
      assert.equal(del.status, 409);
      assert.equal(del.json.error.code, 'conflict');
    } finally {
      await kill(id);
    }

    // The same definition again: every layer step is a cache hit.
    const again = await build({ name: 'app-env', definition });
    assert.equal(again.build.status, 'succeeded');
    assert.equal(again.build.cacheHits, 2);
    assert.ok(again.events.filter((e) => e.type === 'progress' && e.cached).length === 2);

    // A changed late step: the copy stays cached, only the run is rebuilt.
    const changed = { ...definition, steps: definition.steps.map((s) => (s.type === 'run' ? { ...s, command: 'echo v2 > /built.txt' } : s)) };
    const v2 = await build({ name: 'app-env', definition: changed });
    assert.equal(v2.build.status, 'succeeded');
    assert.equal(v2.build.cacheHits, 1);
    const id2 = await sandbox('app-env');
    try {
      assert.equal((await sh(id2, 'cat /built.txt')).stdout, 'v2\n');
    } finally {
      await kill(id2);
    }

    // Not in use any more: removed, and its layers nothing else holds go.
    const before = fs.readdirSync(path.join(d.dataDir, 'layers')).length;
    assert.equal((await api(d.url, 'DELETE', '/v1/templates/app-env')).status, 204);
    assert.equal((await api(d.url, 'GET', '/v1/templates/app-env')).status, 404);
    assert.ok(fs.readdirSync(path.join(d.dataDir, 'layers')).length < before, 'unreferenced layers are pruned');
  });

  it("never follows a link the build made of /etc when it cleans the step's changes (host files stay untouched)", async () => {
    // A host directory that the build's /etc points at once exported: the builder must not edit its hosts or resolv.conf.
    const trap = fs.mkdtempSync('/tmp/capsule-trap-');
    const bait = '127.0.1.1\tbait\t# capsule: this sandbox\n';
    fs.writeFileSync(path.join(trap, 'hosts'), bait);
    fs.writeFileSync(path.join(trap, 'resolv.conf'), 'nameserver 192.0.2.1\n');
    try {
      const { build: b, events } = await build({
        name: 'etc-link',
        definition: { from: 'busybox', steps: [{ type: 'run', command: `rm -rf /etc && ln -s ${trap} /etc` }] },
      });
      assert.equal(b.status, 'succeeded', JSON.stringify(events.slice(-3)));
      assert.equal(fs.readFileSync(path.join(trap, 'hosts'), 'utf8'), bait);
      assert.equal(fs.readFileSync(path.join(trap, 'resolv.conf'), 'utf8'), 'nameserver 192.0.2.1\n');
      assert.equal((await api(d.url, 'DELETE', '/v1/templates/etc-link')).status, 204);
    } finally {
      fs.rmSync(trap, { recursive: true, force: true });
    }
  });

  it('reports a failing step with its exit code and output, keeps nothing of it, and leaves no build sandbox', async () => {
    const { build: b } = await build({
      name: 'broken',
      definition: { from: 'busybox', steps: [{ type: 'run', command: 'echo first' }, { type: 'run', command: 'echo about to fail; exit 7' }] },
    });
    assert.equal(b.status, 'failed');
    assert.match(b.error, /step 2/);
    assert.match(b.error, /exited with 7/);
    assert.match(b.error, /about to fail/);
    const t = await api(d.url, 'GET', '/v1/templates/broken');
    assert.equal(t.json.status, 'failed');
    const create = await api(d.url, 'POST', '/v1/sandboxes', { template: 'broken' });
    assert.equal(create.status, 409);
    assert.deepEqual(drafts(d.dataDir), []);
    assert.deepEqual(buildContainers(d.dataDir), []);
    // The first step's layer was good and is kept for the next try.
    const retry = await build({ name: 'broken', definition: { from: 'busybox', steps: [{ type: 'run', command: 'echo first' }] } });
    assert.equal(retry.build.cacheHits, 1);
  });

  it('joins a build of the same definition, and refuses another definition for the same name while one builds', async () => {
    const def = { from: 'busybox', steps: [{ type: 'run', command: 'sleep 1; echo once >> /runs' }] };
    const a = await api(d.url, 'POST', '/v1/templates', { name: 'racy', definition: def });
    const b = await api(d.url, 'POST', '/v1/templates', { name: 'racy', definition: def });
    assert.equal(a.status, 202, a.text);
    assert.equal(b.json.id, a.json.id, 'the same build');
    const other = await api(d.url, 'POST', '/v1/templates', { name: 'racy', definition: { ...def, steps: [{ type: 'run', command: 'echo other' }] } });
    assert.equal(other.status, 409, other.text);
    assert.equal(other.json.error.details.build, a.json.id);
    const events = await api(d.url, 'GET', `/v1/builds/${a.json.id}/events`);
    assert.equal(JSON.parse(events.text.trim().split('\n').pop()!).build.status, 'succeeded');
  });

  it('refuses bad definitions with 400 before building', async () => {
    const missing = await api(d.url, 'POST', '/v1/templates', { name: 'x', definition: { from: 'busybox', steps: [{ type: 'copy', source: `sha256:${'0'.repeat(64)}`, dest: '/x' }] } });
    assert.equal(missing.status, 400);
    assert.match(missing.json.error.message, /was not uploaded/);
    const taken = await api(d.url, 'POST', '/v1/templates', { name: 'busybox', definition: { from: 'busybox', steps: [] } });
    assert.equal(taken.status, 409);
    const noBase = await api(d.url, 'POST', '/v1/templates', { name: 'x', definition: { from: 'nope', steps: [] } });
    assert.equal(noBase.status, 404);
    const badStep = await api(d.url, 'POST', '/v1/templates', { name: 'x', definition: { from: 'busybox', steps: [{ type: 'run' }] } });
    assert.equal(badStep.status, 400);
    const wrongBytes = await api(d.url, 'PUT', `/v1/blobs/${sha('a')}`, 'b', { 'content-type': 'application/octet-stream' });
    assert.equal(wrongBytes.status, 400);
  });

  it('imports an OCI image archive (docker save and OCI layout) with whiteouts, opaque dirs, env, workdir and user', async () => {
    const { layer1gz, layer2, config, dockerSave } = await tinyImage();
    const image = await upload(dockerSave);
    const { build: b, events } = await build({ name: 'tiny', image });
    assert.equal(b.status, 'succeeded', JSON.stringify(events.slice(-3)));
    const details = (await api(d.url, 'GET', '/v1/templates/tiny')).json;
    assert.equal(details.layers.length, 2);
    assert.equal(details.config.workdir, '/data');
    assert.equal(details.config.user, 'app');
    assert.equal(details.config.env.GREETING, 'from the image');

    const id = await sandbox('tiny');
    try {
      const r = await sh(id, 'pwd; id -u; echo "$GREETING"; ls /data; ls /keep; stat -c %u /data/kept.txt');
      assert.equal(r.exitCode, 0, r.stderr);
      assert.deepEqual(r.stdout.trim().split('\n'), ['/data', '1234', 'from the image', 'kept.txt', 'new', '1234']);
    } finally {
      await kill(id);
    }

    // The same layers as an OCI image layout: they are already in the store.
    const blob = (b: Buffer) => ({ name: `blobs/sha256/${sha(b).slice(7)}`, body: b });
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
        layers: [
          { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha(layer1gz), size: layer1gz.length },
          { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha(layer2), size: layer2.length },
        ],
      }),
    );
    const layout = await tarOf([
      { name: 'oci-layout', body: '{"imageLayoutVersion":"1.0.0"}' },
      { name: 'index.json', body: JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha(manifest), size: manifest.length }] }) },
      { name: 'blobs', type: 'directory' },
      { name: 'blobs/sha256', type: 'directory' },
      blob(manifest),
      blob(config),
      blob(layer1gz),
      blob(layer2),
    ]);
    const oci = await build({ name: 'tiny-oci', image: await upload(layout) });
    assert.equal(oci.build.status, 'succeeded');
    assert.equal(oci.build.cacheHits, 2);
    assert.deepEqual((await api(d.url, 'GET', '/v1/templates/tiny-oci')).json.layers.map((l: any) => l.digest), details.layers.map((l: any) => l.digest));

    // A layer whose bytes differ from the config's diff_id is refused.
    const lying = await tarOf([
      { name: 'manifest.json', body: JSON.stringify([{ Config: 'config.json', Layers: ['l1/layer.tar'] }]) },
      { name: 'config.json', body: JSON.stringify({ config: {}, rootfs: { type: 'layers', diff_ids: [sha('something else')] } }) },
      { name: 'l1/layer.tar', body: await tarOf([{ name: 'x', body: 'x' }]) },
    ]);
    const bad = await build({ name: 'lying', image: await upload(lying) });
    assert.equal(bad.build.status, 'failed');
    assert.match(bad.build.error, /hashes to/);
    // Not an image at all.
    const junk = await build({ name: 'junk', image: await upload(await tarOf([{ name: 'readme', body: 'hi' }])) });
    assert.equal(junk.build.status, 'failed');
    assert.match(junk.build.error, /docker save tarball or an OCI image layout/);
    assert.deepEqual(drafts(d.dataDir), []);
  });

  it('keeps owners apart: each sees only its own templates and blobs, and identical steps share layers on disk', async () => {
    const keyA = (await api(d.url, 'POST', '/v1/keys', { name: 'tenant-a' })).json.key as string;
    const keyB = (await api(d.url, 'POST', '/v1/keys', { name: 'tenant-b' })).json.key as string;
    const A = { authorization: `Bearer ${keyA}` };
    const B = { authorization: `Bearer ${keyB}` };
    const archive = await tarOf([{ name: 'shared.txt', body: 'same bytes\n' }]);
    const digest = await upload(archive, A);
    // B has not uploaded it: B cannot use A's upload by its digest.
    assert.equal((await api(d.url, 'GET', `/v1/blobs/${digest}`, undefined, B)).status, 404);
    const def = { from: 'busybox', steps: [{ type: 'copy', source: digest, dest: '/s' }, { type: 'run', command: 'cat /s/shared.txt > /copy.txt' }] };
    const denied = await api(d.url, 'POST', '/v1/templates', { name: 'mine', definition: def }, B);
    assert.equal(denied.status, 400);
    await upload(archive, B);

    const a = await build({ name: 'mine', definition: def }, A);
    assert.equal(a.build.status, 'succeeded');
    const b = await build({ name: 'mine', definition: def }, B);
    assert.equal(b.build.status, 'succeeded');
    assert.equal(b.build.cacheHits, 2, "B's build reuses A's layers");
    const la = (await api(d.url, 'GET', '/v1/templates/mine', undefined, A)).json.layers.map((l: any) => l.digest);
    const lb = (await api(d.url, 'GET', '/v1/templates/mine', undefined, B)).json.layers.map((l: any) => l.digest);
    assert.deepEqual(la, lb);

    // A third owner sees neither.
    const keyC = (await api(d.url, 'POST', '/v1/keys', { name: 'tenant-c' })).json.key as string;
    const C = { authorization: `Bearer ${keyC}` };
    assert.equal((await api(d.url, 'GET', '/v1/templates/mine', undefined, C)).status, 404);
    assert.ok(!(await api(d.url, 'GET', '/v1/templates', undefined, C)).json.templates.some((t: any) => t.name === 'mine'));
    assert.equal((await api(d.url, 'POST', '/v1/sandboxes', { template: 'mine' }, C)).status, 404);

    // A removes its template; B's, on the same layers, still works.
    assert.equal((await api(d.url, 'DELETE', '/v1/templates/mine', undefined, A)).status, 204);
    const id = await sandbox('mine', B);
    try {
      assert.equal((await sh(id, 'cat /copy.txt', B)).stdout, 'same bytes\n');
    } finally {
      await kill(id, B);
    }
  });
});

describe('a daemon killed in the middle of a build', () => {
  it('marks the build failed at the next start and leaves no draft, build sandbox or mount', async () => {
    d = await startTestDaemon();
    const dataDir = d.dataDir;
    try {
      const r = await api(d.url, 'POST', '/v1/templates', { name: 'slow', definition: { from: 'busybox', steps: [{ type: 'run', command: 'echo started; sleep 60' }] } });
      assert.equal(r.status, 202, r.text);
      const buildId = r.json.id as string;
      // Wait until the step runs in its build sandbox.
      const deadline = Date.now() + 30_000;
      while (buildContainers(dataDir).length === 0) {
        assert.ok(Date.now() < deadline, 'the build sandbox never appeared');
        await new Promise((res) => setTimeout(res, 100));
      }
      await d.kill();
      d = await startTestDaemon({ dataDir });
      const info = await api(d.url, 'GET', `/v1/builds/${buildId}`);
      assert.equal(info.status, 200);
      assert.equal(info.json.status, 'failed');
      assert.match(info.json.error, /restart/);
      const t = await api(d.url, 'GET', '/v1/templates/slow');
      assert.equal(t.json.status, 'failed');
      assert.deepEqual(drafts(dataDir), []);
      assert.deepEqual(buildContainers(dataDir), []);
      // And it builds cleanly now.
      const again = await build({ name: 'slow', definition: { from: 'busybox', steps: [{ type: 'run', command: 'echo quick' }] } });
      assert.equal(again.build.status, 'succeeded');
    } finally {
      await d.stop();
    }
  });
});
