/**
 * E2B's snapshot API against a real daemon and real busybox sandboxes, driven only by E2B's own,
 * unmodified `e2b` SDK: `sandbox.createSnapshot`, `Sandbox.create(snapshotId)`, `Sandbox.listSnapshots`,
 * `Sandbox.deleteSnapshot`, on Capsule's filesystem snapshots (ADR 0013, ADR 0014). `Sandbox.fork` is
 * Capsule's fork with memory (ADR 0018): refused with the reason on a crun daemon, and on a runc daemon with
 * CRIU 4 the forks continue the source's process.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { Sandbox, SandboxError, SandboxNotFoundError, type SnapshotInfo } from 'e2b';
import path from 'node:path';
import { CLI, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { checkCriu } from '../../../src/runtime/criu.js';

const skip = process.getuid?.() !== 0 ? 'needs root (real crun sandboxes)' : false;

let d: TestDaemon;
let src: Sandbox | undefined;
let snap: SnapshotInfo | undefined;
const made: Sandbox[] = [];

/** A key made the way the README tells users to make one. */
function e2bKey(name: string, owner?: string): string {
  const r = spawnSync(process.execPath, [CLI, 'keys', 'create', '--e2b', '--name', name, ...(owner ? ['--owner', owner] : [])], {
    env: { ...process.env, CAPSULE_URL: d.url, CAPSULE_API_KEY: d.adminKey ?? '' },
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim();
}

/** Every sandbox a test makes is killed at the end. */
async function create(template: string, opts: Parameters<typeof Sandbox.create>[1] = {}): Promise<Sandbox> {
  const s = await Sandbox.create(template, { allowInternetAccess: false, ...opts });
  made.push(s);
  return s;
}

/** Every page of a listing, following X-Next-Token. */
async function all(p: ReturnType<typeof Sandbox.listSnapshots>): Promise<SnapshotInfo[][]> {
  const pages: SnapshotInfo[][] = [];
  while (p.hasNext) pages.push(await p.nextItems());
  return pages;
}

function status(code: number) {
  return (e: unknown) => e instanceof SandboxError && (e as SandboxError & { statusCode?: number }).statusCode === code;
}

describe('E2B snapshots against Capsule', { skip, timeout: 5 * 60_000 }, () => {
  before(async () => {
    const dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir });
    process.env.E2B_API_KEY = e2bKey('e2b-snapshots');
    process.env.E2B_API_URL = `${d.url}/e2b`;
    process.env.E2B_SANDBOX_URL = d.url;
    src = await create('busybox', { timeoutMs: 5 * 60_000 });
  });
  after(async () => {
    for (const s of made) await s.kill().catch(() => undefined);
    delete process.env.E2B_API_KEY;
    delete process.env.E2B_API_URL;
    delete process.env.E2B_SANDBOX_URL;
    await d?.stop();
    if (d) await removeDataDir(d.dataDir);
  });

  it('createSnapshot answers a snapshot id and its name', async () => {
    await src!.files.write('/root/before.txt', 'written before the snapshot');
    snap = await src!.createSnapshot({ name: 'e2b-snap' });
    assert.match(snap.snapshotId, /^snap-[a-z0-9]{12}$/);
    assert.deepEqual(snap.names, ['e2b-snap']);
    assert.equal(await src!.isRunning(), true, 'the source runs on');
    await src!.files.write('/root/after.txt', 'written after the snapshot');
  });

  it('Sandbox.create(snapshotId) starts from the snapshot’s files, without the source’s later writes', async () => {
    const fork = await create(snap!.snapshotId);
    assert.notEqual(fork.sandboxId, src!.sandboxId);
    assert.equal(await fork.files.read('/root/before.txt'), 'written before the snapshot');
    assert.equal(await fork.files.exists('/root/after.txt'), false);
    const info = await fork.getInfo();
    assert.equal(info.templateId, 'busybox', 'a fork reports the snapshot’s template');
    // The fork's writes are its own.
    await fork.files.write('/root/fork.txt', 'fork');
    assert.equal(await src!.files.exists('/root/fork.txt'), false);
    // By name, too.
    const byName = await create('e2b-snap');
    assert.equal(await byName.files.read('/root/before.txt'), 'written before the snapshot');
    assert.equal(await byName.files.exists('/root/fork.txt'), false);
  });

  it('listSnapshots lists them, filtered by sandbox and by name, newest first, in pages', async () => {
    const second = await Sandbox.createSnapshot(src!.sandboxId);
    assert.deepEqual(second.names, []);
    const everything = (await all(Sandbox.listSnapshots())).flat();
    assert.deepEqual(everything, [
      { snapshotId: second.snapshotId, names: [] },
      { snapshotId: snap!.snapshotId, names: ['e2b-snap'] },
    ]);
    const pages = await all(src!.listSnapshots({ limit: 1 }));
    assert.deepEqual(
      pages.map((p) => p.map((x) => x.snapshotId)),
      [[second.snapshotId], [snap!.snapshotId]],
    );
    assert.deepEqual((await Sandbox.listSnapshots({ name: 'e2b-snap' }).nextItems()).map((x) => x.snapshotId), [snap!.snapshotId]);
    assert.deepEqual((await Sandbox.listSnapshots({ name: second.snapshotId }).nextItems()).map((x) => x.snapshotId), [second.snapshotId]);
    assert.deepEqual(await Sandbox.listSnapshots({ sandboxId: 'sbx-000000000000' }).nextItems(), []);
    assert.equal(await Sandbox.deleteSnapshot(second.snapshotId), true);
  });

  it('snapshots a paused sandbox, which stays paused; refuses a taken name, a bad one and a stopped sandbox', async () => {
    await src!.pause();
    const paused = await src!.createSnapshot();
    assert.equal((await src!.getInfo()).state, 'paused');
    assert.equal(await Sandbox.deleteSnapshot(paused.snapshotId), true);
    await Sandbox.connect(src!.sandboxId);
    await assert.rejects(src!.createSnapshot({ name: 'e2b-snap' }), (e: unknown) => status(409)(e) && /already exists/.test(String(e)));
    await assert.rejects(src!.createSnapshot({ name: 'Not A Name' }), status(400));
    // Paused without memory is Capsule's stop: its disk is unmounted, so it is refused (start it first).
    const other = await create('busybox');
    await other.pause({ keepMemory: false });
    await assert.rejects(other.createSnapshot(), (e: unknown) => status(409)(e) && /stopped/.test(String(e)));
    await other.kill();
    made.splice(made.indexOf(other), 1);
  });

  it('another key’s owner can neither see nor use them', async () => {
    const other = e2bKey('e2b-snap-other', 'someone-else');
    assert.deepEqual(await Sandbox.listSnapshots({ apiKey: other }).nextItems(), []);
    await assert.rejects(Sandbox.create(snap!.snapshotId, { apiKey: other, allowInternetAccess: false }), status(404));
    await assert.rejects(Sandbox.create('e2b-snap', { apiKey: other, allowInternetAccess: false }), status(404));
    await assert.rejects(Sandbox.createSnapshot(src!.sandboxId, { apiKey: other }), (e: unknown) => e instanceof SandboxNotFoundError);
    assert.equal(await Sandbox.deleteSnapshot(snap!.snapshotId, { apiKey: other }), false);
    assert.equal((await Sandbox.listSnapshots({ name: 'e2b-snap' }).nextItems()).length, 1, 'still there for its owner');
  });

  it('fork is refused where the backend has no memory snapshots, with the reason', async () => {
    await assert.rejects(Sandbox.fork(src!.sandboxId), (e: unknown) => {
      assert.ok(status(422)(e), String(e));
      assert.match((e as Error).message, /memorySnapshot/);
      assert.match((e as Error).message, /runc/, 'the reason says what would make it work');
      return true;
    });
    await assert.rejects(Sandbox.fork('sbx-000000000000'), (e: unknown) => e instanceof SandboxNotFoundError);
  });

  it('deleteSnapshot is refused while a sandbox started from it lives, then deletes; false when gone', async () => {
    const forks = made.filter((s) => s !== src);
    await assert.rejects(Sandbox.deleteSnapshot(snap!.snapshotId), (e: unknown) => {
      assert.ok(status(409)(e), String(e));
      for (const f of forks) assert.ok((e as Error).message.includes(f.sandboxId), (e as Error).message);
      return true;
    });
    for (const f of forks) await f.kill();
    assert.equal(await Sandbox.deleteSnapshot(snap!.snapshotId), true);
    assert.equal(await Sandbox.deleteSnapshot(snap!.snapshotId), false);
    assert.equal(await Sandbox.deleteSnapshot('e2b-snap'), false);
    assert.deepEqual(await Sandbox.listSnapshots().nextItems(), []);
    await assert.rejects(Sandbox.create(snap!.snapshotId, { allowInternetAccess: false }), status(404));
    assert.equal(await Sandbox.deleteSnapshot('busybox'), false, 'templates are not deleted through the E2B API');
  });
});

const criu = process.getuid?.() === 0 ? await checkCriu() : null;
const forkSkip = skip || (!criu?.ok ? `needs CRIU 4 (${criu?.reason})` : false);

describe('E2B Sandbox.fork on a runc daemon with CRIU 4', { skip: forkSkip, timeout: 5 * 60_000 }, () => {
  let rd: TestDaemon | undefined;
  const mine: Sandbox[] = [];
  before(async () => {
    const dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    rd = await startTestDaemon({ dataDir, env: { CAPSULE_RUNTIME: 'runc' } });
    d = rd;
    process.env.E2B_API_KEY = e2bKey('e2b-fork');
    process.env.E2B_API_URL = `${rd.url}/e2b`;
    process.env.E2B_SANDBOX_URL = rd.url;
  });
  after(async () => {
    for (const s of mine) await s.kill().catch(() => undefined);
    delete process.env.E2B_API_KEY;
    delete process.env.E2B_API_URL;
    delete process.env.E2B_SANDBOX_URL;
    await rd?.stop();
    if (rd) await removeDataDir(rd.dataDir);
  });

  const counter = (id: string): number | null => {
    try {
      return Number(fs.readFileSync(path.join(rd!.dataDir, 'sandboxes', id, 'rootfs', 'tmp', 'n'), 'utf8').trim());
    } catch {
      return null;
    }
  };
  const until = async (what: string, ok: () => boolean): Promise<void> => {
    const deadline = Date.now() + 15_000;
    while (!ok()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  it('forks continue the source\'s process from the same value, each its own sandbox with the lifetime asked for', async () => {
    const source = await Sandbox.create('busybox', { allowInternetAccess: false, timeoutMs: 5 * 60_000 });
    mine.push(source);
    await source.commands.run('n=0; while :; do n=$((n+1)); echo $n > /tmp/n.new; mv /tmp/n.new /tmp/n; sleep 0.1; done', { background: true });
    await until('the source counter', () => (counter(source.sandboxId) ?? 0) >= 3);
    const at = counter(source.sandboxId)!;
    const forks = await Sandbox.fork(source.sandboxId, { count: 2, timeoutMs: 120_000 });
    assert.equal(forks.length, 2);
    for (const f of forks) {
      assert.ok(f instanceof Sandbox, String(f));
      mine.push(f);
      assert.notEqual(f.sandboxId, source.sandboxId);
      await until(`fork ${f.sandboxId}'s counter`, () => (counter(f.sandboxId) ?? 0) > at);
      assert.ok(counter(f.sandboxId)! < at + 100, 'it continues from the source\'s value, not from 1');
      const info = await f.getInfo();
      const left = Date.parse(String(info.endAt)) - Date.now();
      assert.ok(left > 60_000 && left <= 120_000, `the fork's lifetime is the one asked for (${left} ms left)`);
    }
    assert.equal(await source.isRunning(), true, 'the source runs on');
  });
});
