/**
 * Filesystem snapshots against a real daemon and real crun sandboxes: a
 * consistent copy of a sandbox that keeps writing, forks that share it on disk
 * and not each other's writes, deletion refused while used, chains of
 * snapshots, restart survival, owner scoping, the template's config carried
 * over, commands and kills racing a snapshot, bad input, and the CLI. Ended sandboxes are checked for leftovers.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { api, CLI, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { settledLeftovers } from '../../helpers/leftovers.js';
import { ConflictError, InvalidArgumentError, NotFoundError, Sandbox, Snapshot, type ConnectionOptions } from '../../../src/sdk/index.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function capsule(d: TestDaemon, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CAPSULE_URL: d.url } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Host disk space a file really takes (sparse images count only what was written). */
function allocated(p: string): number {
  return fs.statSync(p).blocks * 512;
}

describe('filesystem snapshots (real sandboxes)', () => {
  const dataDir = tempDataDir();
  fs.chmodSync(dataDir, 0o755);
  let d: TestDaemon;
  let conn: ConnectionOptions;
  const made: Sandbox[] = [];
  const create = async (opts: Parameters<typeof Sandbox.create>[0] = {}) => {
    const s = await Sandbox.create({ ...conn, template: 'busybox', ...opts });
    made.push(s);
    return s;
  };
  const assertGone = async (id: string) => assert.deepEqual(await settledLeftovers(id, dataDir), [], `sandbox ${id} left something`);

  before(async () => {
    d = await startTestDaemon({ dataDir });
    conn = { apiUrl: d.url };
  });
  after(async () => {
    for (const s of made) await s.kill().catch(() => undefined);
    await d?.stop();
    await removeDataDir(dataDir);
  });

  it('a snapshot of a sandbox that keeps appending to a file holds a consistent prefix; the source runs on', async () => {
    const src = await create();
    // Fixed-width lines: a torn write would show as a short or garbled line.
    await src.commands.run('i=0; while :; do i=$((i+1)); printf "%08d\\n" $i >> /log; done', { background: true });
    await sleep(400);
    const snap = await src.snapshot({ name: 'appending' });
    assert.equal(snap.name, 'appending');
    assert.match(snap.id, /^snap-[a-z0-9]{12}$/);
    assert.equal(snap.sandboxId, src.id);
    assert.equal(snap.template, 'busybox');
    assert.equal(snap.layers, 2);
    assert.ok(snap.sizeBytes > 0);
    assert.equal((await src.getInfo()).state, 'running');

    const fork = await create({ snapshot: 'appending', template: undefined });
    assert.equal((await fork.getInfo()).snapshot, snap.id);
    assert.equal((await fork.getInfo()).template, 'busybox');
    const text = await fork.files.read('/log');
    const lines = text.split('\n');
    assert.equal(lines.pop(), '', 'the copy ends with a whole line');
    assert.ok(lines.length > 10, `only ${lines.length} lines were written before the snapshot`);
    lines.forEach((l, i) => assert.equal(l, String(i + 1).padStart(8, '0'), `line ${i + 1}`));
    // Nothing runs in the fork (processes are not part of a filesystem snapshot), and the source went on.
    await sleep(200);
    assert.equal((await fork.files.read('/log')).length, text.length);
    const later = Number((await src.commands.run('tail -n 1 /log')).stdout);
    assert.ok(later > lines.length, `the source went on counting (${later} > ${lines.length})`);
  });

  it('ten forks see the snapshot\'s files, not each other\'s writes, and cost no disk until they write', async () => {
    const src = await create({ envs: { FROM_SOURCE: 'yes' } });
    await src.commands.run('mkdir -p /data && head -c 16777216 /dev/urandom > /data/big.bin && echo hello > /data/hello && rm /bin/vi');
    const sum = (await src.commands.run('md5sum /data/big.bin')).stdout.split(' ')[0];
    const snap = await src.snapshot({ metadata: { purpose: 'fan-out' } });
    assert.deepEqual(snap.metadata, { purpose: 'fan-out' });
    assert.ok(snap.sizeBytes >= 16 * 1024 * 1024 && snap.sizeBytes < 17 * 1024 * 1024, `size ${snap.sizeBytes}`);
    const layerDir = fs.readdirSync(path.join(dataDir, 'layers')).filter((e) => !e.startsWith('.'));
    const du = (dir: string): number => {
      let n = 0;
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        n += fs.lstatSync(p).blocks * 512;
        if (e.isDirectory()) n += du(p);
      }
      return n;
    };
    const storeBefore = layerDir.reduce((n, e) => n + du(path.join(dataDir, 'layers', e)), 0);

    const forks: Sandbox[] = [];
    for (let i = 0; i < 10; i++) forks.push(await create({ snapshot: snap.id, template: undefined }));
    const fresh = await create();
    for (const [i, f] of forks.entries()) {
      const r = await f.commands.run(`cat /data/hello; md5sum /data/big.bin; echo $FROM_SOURCE; test -e /bin/vi && echo vi-is-back; echo ${i} > /data/mine`);
      assert.equal(r.stdout, `hello\n${sum}  /data/big.bin\nyes\n`, `fork ${i}`);
    }
    for (const [i, f] of forks.entries()) assert.equal(await f.files.read('/data/mine'), `${i}\n`, `fork ${i} sees only its own write`);
    assert.equal((await src.commands.run('cat /data/mine 2>&1; true')).stdout.includes('No such file'), true, 'the source sees no fork\'s write');

    // On the host: one copy of the snapshot in the layer store, and forks' disks no bigger than a fresh sandbox's.
    const freshDisk = allocated(path.join(dataDir, 'sandboxes', fresh.id, 'disk.img'));
    const forkDisks = forks.map((f) => allocated(path.join(dataDir, 'sandboxes', f.id, 'disk.img')));
    const extra = forkDisks.reduce((n, b) => n + Math.max(0, b - freshDisk), 0);
    console.log(`# snapshot ${snap.sizeBytes} B; a fresh disk ${freshDisk} B; ten forks' disks beyond that: ${extra} B in all`);
    assert.ok(extra < snap.sizeBytes / 4, `ten forks used ${extra} B of disk beyond a fresh sandbox's; the snapshot is ${snap.sizeBytes} B`);
    const storeAfter = fs.readdirSync(path.join(dataDir, 'layers')).filter((e) => !e.startsWith('.')).reduce((n, e) => n + du(path.join(dataDir, 'layers', e)), 0);
    assert.equal(storeAfter, storeBefore, 'forks add nothing to the layer store');
    assert.deepEqual([...(await Snapshot.get(snap.id, conn)).usedBy].sort(), forks.map((f) => f.id).sort());

    // Killed forks leave nothing behind (mounts, loop devices, cgroups, processes, files), and the snapshot is free again.
    await Promise.all(forks.map((f) => f.kill()));
    for (const f of forks) await assertGone(f.id);
    assert.deepEqual((await Snapshot.get(snap.id, conn)).usedBy, []);
    assert.equal((await src.commands.run('cat /data/hello')).stdout, 'hello\n', 'the source is untouched');
  });

  it('a command asked during a snapshot waits for it; two snapshots at once both complete', async () => {
    const src = await create();
    await src.commands.run('head -c 67108864 /dev/urandom > /big && echo a > /a');
    const [one, two, cmd] = await Promise.all([src.snapshot(), src.snapshot(), src.commands.run('echo b > /b; cat /a')]);
    assert.notEqual(one.id, two.id);
    assert.equal(cmd.stdout, 'a\n');
    assert.equal((await src.getInfo()).state, 'running');
    // Whether /b is in a snapshot depends on the order the queue ran them in; /a is in both.
    for (const s of [one, two]) {
      const f = await create({ snapshot: s.id, template: undefined });
      assert.equal((await f.commands.run('cat /a; wc -c < /big')).stdout.replace(/ +/g, ''), 'a\n67108864\n');
    }
  });

  it('a kill while a snapshot is being copied: the snapshot answers 409 and nothing is left of either', async () => {
    const src = await create();
    await src.commands.run('head -c 209715200 /dev/urandom > /big');
    const layersDir = path.join(dataDir, 'layers');
    const before = fs.readdirSync(layersDir).sort();
    const taking = src.snapshot({ name: 'cut-off' }).then(
      () => null,
      (e: unknown) => e,
    );
    await sleep(30);
    await src.kill();
    const err = await taking;
    assert.ok(err instanceof ConflictError, `the snapshot answered ${String(err)}`);
    await assertGone(src.id);
    await assert.rejects(Snapshot.get('cut-off', conn), (e: unknown) => e instanceof NotFoundError);
    let after = fs.readdirSync(layersDir).sort();
    for (let i = 0; i < 40 && after.join() !== before.join(); i++) {
      await sleep(50);
      after = fs.readdirSync(layersDir).sort();
    }
    assert.deepEqual(after, before, 'no layer and no draft is left in the store');
  });

  it('bad input gets typed 4xx: unknown snapshots and sandboxes 404, malformed refs 400', async () => {
    await assert.rejects(create({ snapshot: 'no-such-snapshot', template: undefined }), (e: unknown) => e instanceof NotFoundError);
    await assert.rejects(create({ snapshot: 'snap-000000000000', template: undefined }), (e: unknown) => e instanceof NotFoundError);
    for (const [method, url, body, status] of [
      ['GET', '/v1/snapshots/snap-000000000000', undefined, 404],
      ['GET', '/v1/snapshots/no-such-name', undefined, 404],
      ['DELETE', '/v1/snapshots/no-such-name', undefined, 404],
      ['GET', '/v1/snapshots/Bad%20Name', undefined, 400],
      ['POST', '/v1/sandboxes/sbx-000000000000/snapshots', {}, 404],
      ['POST', '/v1/sandboxes', { snapshot: '../etc' }, 400],
      ['POST', '/v1/sandboxes', { snapshot: 'no-such-snapshot' }, 404],
      ['GET', '/v1/snapshots?sandboxId=nope', undefined, 400],
    ] as const) {
      const r = await api(d.url, method, url, body);
      assert.equal(r.status, status, `${method} ${url}: ${r.text}`);
      assert.equal(typeof r.json.error.code, 'string', `${method} ${url} names its error`);
    }
    const src = await create();
    const r = await api(d.url, 'POST', `/v1/sandboxes/${src.id}/snapshots`, { name: 'x', extra: true });
    assert.equal(r.status, 400, r.text);
    await src.kill();
    const dead = await api(d.url, 'POST', `/v1/sandboxes/${src.id}/snapshots`, {});
    assert.equal(dead.status, 409, dead.text);
    assert.equal(dead.json.error.details.state, 'killed');
  });

  it('delete is refused while a sandbox started from it lives (even stopped); then its layer goes', async () => {
    const src = await create();
    await src.commands.run('echo kept > /kept');
    const snap = await src.snapshot({ name: 'busy-snap' });
    const fork = await create({ snapshot: 'busy-snap', template: undefined });
    await fork.stop();
    const del = await api(d.url, 'DELETE', '/v1/snapshots/busy-snap');
    assert.equal(del.status, 409, del.text);
    assert.deepEqual(del.json.error.details.sandboxes, [fork.id]);
    await assert.rejects(Snapshot.delete(snap.id, conn), (e: unknown) => e instanceof ConflictError);
    await fork.start();
    assert.equal((await fork.commands.run('cat /kept')).stdout, 'kept\n');
    await fork.kill();
    await assertGone(fork.id);
    const layers = () => fs.readdirSync(path.join(dataDir, 'layers')).filter((e) => !e.startsWith('.'));
    const before = layers().length;
    await Snapshot.delete('busy-snap', conn);
    await assert.rejects(Snapshot.get(snap.id, conn), (e: unknown) => e instanceof NotFoundError);
    assert.equal(layers().length, before - 1, 'its layer was removed with it');
    await assert.rejects(create({ snapshot: snap.id, template: undefined }), (e: unknown) => e instanceof NotFoundError);
  });

  it('a snapshot of a fork stacks on its parent; the parent can go while the child lives on', async () => {
    const src = await create();
    await src.commands.run('echo one > /one');
    const parent = await src.snapshot({ name: 'parent' });
    const fork = await create({ snapshot: 'parent', template: undefined });
    await fork.commands.run('echo two > /two; rm /one');
    const child = await fork.snapshot({ name: 'child' });
    assert.equal(child.parentSnapshot, parent.id);
    assert.equal(child.layers, 3);
    await fork.kill();
    await Snapshot.delete('parent', conn);
    const grandchild = await create({ snapshot: 'child', template: undefined });
    assert.equal((await grandchild.commands.run('cat /two; test -e /one || echo one-is-gone')).stdout, 'two\none-is-gone\n');
  });

  it('a paused sandbox is snapshotted and stays paused; a stopped one answers 409; template and snapshot together are 400', async () => {
    const src = await create();
    await src.commands.run('echo frozen > /f');
    await src.pause();
    const snap = await src.snapshot();
    assert.equal(snap.name, undefined);
    assert.equal((await src.getInfo()).state, 'paused');
    assert.equal(fs.readFileSync(`/sys/fs/cgroup/freezer/capsule/${src.id}/freezer.state`, 'utf8').trim(), 'FROZEN');
    const fork = await create({ snapshot: snap.id, template: undefined });
    assert.equal(await fork.files.read('/f'), 'frozen\n');
    await src.stop();
    const r = await api(d.url, 'POST', `/v1/sandboxes/${src.id}/snapshots`, {});
    assert.equal(r.status, 409, r.text);
    assert.equal(r.json.error.details.state, 'stopped');
    await assert.rejects(Sandbox.create({ ...conn, template: 'busybox', snapshot: snap.id }), (e: unknown) => e instanceof InvalidArgumentError);
    const badName = await api(d.url, 'POST', `/v1/sandboxes/${fork.id}/snapshots`, { name: 'snap-abcdefghijkl' });
    assert.equal(badName.status, 400, badName.text);
    const dup = await api(d.url, 'POST', `/v1/sandboxes/${fork.id}/snapshots`, { name: 'once' });
    assert.equal(dup.status, 201, dup.text);
    const again = await api(d.url, 'POST', `/v1/sandboxes/${fork.id}/snapshots`, { name: 'once' });
    assert.equal(again.status, 409, again.text);
  });

  it("the template's env, working directory and user carry over (base)", async () => {
    const src = await create({ template: 'base', envs: { EXTRA: 'x' } });
    await src.commands.run('echo mine > notes.txt');
    const snap = await src.snapshot();
    assert.equal(snap.template, 'base');
    const fork = await create({ snapshot: snap.id, template: undefined });
    const r = await fork.commands.run('whoami; pwd; cat notes.txt; echo $EXTRA; sudo -n true && echo sudo-works');
    assert.equal(r.stdout, 'user\n/home/user\nmine\nx\nsudo-works\n', r.stderr);
  });

  it('snapshots belong to their owner: others get 404 and cannot start from them', async () => {
    const keyFor = async (owner: string) => (await api(d.url, 'POST', '/v1/keys', { name: owner, owner })).json.key as string;
    const alice = { apiUrl: d.url, apiKey: await keyFor('alice') };
    const bob = { apiUrl: d.url, apiKey: await keyFor('bob') };
    const src = await Sandbox.create({ ...alice, template: 'busybox' });
    made.push(src);
    await src.commands.run('echo secret > /s');
    const snap = await src.snapshot({ name: 'mine' });
    await assert.rejects(Snapshot.get(snap.id, bob), (e: unknown) => e instanceof NotFoundError);
    await assert.rejects(Snapshot.get('mine', bob), (e: unknown) => e instanceof NotFoundError);
    await assert.rejects(Snapshot.delete(snap.id, bob), (e: unknown) => e instanceof NotFoundError);
    await assert.rejects(Sandbox.create({ ...bob, snapshot: snap.id }), (e: unknown) => e instanceof NotFoundError);
    assert.deepEqual(await Snapshot.list(bob), []);
    const asBob = await api(d.url, 'POST', `/v1/sandboxes/${src.id}/snapshots`, {}, { authorization: `Bearer ${bob.apiKey}` });
    assert.equal(asBob.status, 404, asBob.text);
    assert.deepEqual((await Snapshot.list(alice)).map((s) => s.id), [snap.id]);
    const own = await Sandbox.create({ ...alice, snapshot: 'mine' });
    made.push(own);
    assert.equal((await own.commands.run('cat /s')).stdout, 'secret\n');
  });

  it('snapshots survive a daemon restart; the CLI takes, lists, inspects and removes them', async () => {
    const src = await create();
    await src.commands.run('echo durable > /d');
    const t = await capsule(d, ['snapshot', 'create', src.id, '--name', 'cli-snap', '-m', 'k=v']);
    assert.equal(t.code, 0, t.stderr);
    const id = t.stdout.trim();
    assert.match(id, /^snap-/);
    await d.stop({ keepSandboxes: true, removeDataDir: false });
    d = await startTestDaemon({ dataDir });
    conn = { apiUrl: d.url };
    const ls = await capsule(d, ['snapshot', 'ls']);
    assert.match(ls.stdout, new RegExp(`${id}\\s+cli-snap\\s+busybox`));
    const c = await capsule(d, ['create', '--snapshot', 'cli-snap']);
    assert.equal(c.code, 0, c.stderr);
    const forkId = c.stdout.trim();
    const fork = await Sandbox.connect(forkId, conn);
    made.push(fork);
    assert.equal((await fork.commands.run('cat /d')).stdout, 'durable\n');
    const insp = await capsule(d, ['snapshot', 'inspect', 'cli-snap', '--json']);
    assert.deepEqual(JSON.parse(insp.stdout).usedBy, [forkId]);
    assert.deepEqual(JSON.parse(insp.stdout).metadata, { k: 'v' });
    const rm = await capsule(d, ['snapshot', 'rm', 'cli-snap']);
    assert.equal(rm.code, 1);
    assert.match(rm.stderr, /^capsule: conflict: snapshot cli-snap is in use by sandbox/);
    await fork.kill();
    assert.equal((await capsule(d, ['snapshot', 'rm', 'cli-snap'])).code, 0);
  });
});

describe('filesystem snapshots and the warm pool', () => {
  const dataDir = tempDataDir();
  fs.chmodSync(dataDir, 0o755);
  let d: TestDaemon;
  const pool = async () => (await api(d.url, 'GET', '/v1/info')).json.pools.find((p: { template: string }) => p.template === 'busybox');

  before(async () => {
    d = await startTestDaemon({ dataDir, args: ['--pool', 'busybox=1'] });
  });
  after(async () => {
    await d?.stop();
    await removeDataDir(dataDir);
  });

  it('a sandbox claimed from the pool can be snapshotted (its layers were recorded at the claim); its forks start cold', async () => {
    const conn = { apiUrl: d.url };
    for (let i = 0; i < 400 && !((await pool())?.ready >= 1); i++) await sleep(25);
    const claims = (await pool()).claims;
    const src = await Sandbox.create({ ...conn, template: 'busybox' });
    try {
      assert.equal((await pool()).claims, claims + 1, 'the source came from the pool');
      await src.commands.run('echo pooled > /p');
      const snap = await src.snapshot();
      assert.equal(snap.layers, 2);
      const fork = await Sandbox.create({ ...conn, snapshot: snap.id });
      try {
        assert.equal((await pool()).claims, claims + 1, 'a fork is never a pooled sandbox');
        assert.equal((await fork.commands.run('cat /p')).stdout, 'pooled\n');
      } finally {
        await fork.kill();
      }
      assert.deepEqual(await settledLeftovers(fork.id, dataDir), []);
    } finally {
      await src.kill();
    }
  });
});
