/**
 * Pause/resume, stop/start and the policies as pure ordering logic: a runtime
 * whose steps wait on gates (a fake is fine here; the same verbs run against
 * real crun sandboxes in test/integration/sandboxes/lifecycle.test.ts), a real
 * SQLite store, the real SandboxManager. Plus the policy arithmetic.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, beforeEach, describe, it } from 'node:test';
import { loadConfig } from '../../../src/config/index.js';
import { openDb } from '../../../src/store/db.js';
import { SandboxStore } from '../../../src/sandboxes/store.js';
import { SandboxManager } from '../../../src/sandboxes/manager.js';
import { requestContext, SYSTEM_CONTEXT } from '../../../src/auth/context.js';
import { ActivityTracker } from '../../../src/sandboxes/activity.js';
import { DEFAULT_DELETE_AFTER_MS, dueReason, lifetimeAtWake, parseStoredPolicy, resolvePolicy } from '../../../src/sandboxes/policy.js';
import type { AgentConnection, AgentEndpoint } from '../../../src/agent/types.js';
import type { ContainerInfo, ContainerStatus, RuntimeDriver } from '../../../src/runtime/types.js';

class Gate {
  private release!: () => void;
  readonly promise = new Promise<void>((r) => (this.release = r));
  open(): void {
    this.release();
  }
}

/** Holds each sandbox's status in memory; any verb can be made to wait on a gate or to fail. */
class FakeRuntime implements RuntimeDriver {
  kind = 'fake';
  name = 'fake 1';
  capabilities = { isolation: 'container' as const, pause: true, stop: true, volumes: false, snapshot: false, memorySnapshot: false, updateResources: false, exportChanges: false, fileHandoff: false, network: ['none' as const], maxLayers: 4 };
  status = new Map<string, ContainerStatus>();
  calls: string[] = [];
  destroyed: string[] = [];
  gates: Partial<Record<'pause' | 'resume' | 'stop' | 'start', Gate>> = {};
  started: Partial<Record<'pause' | 'resume' | 'stop' | 'start', Gate>> = {};
  fail: Partial<Record<'pause' | 'resume' | 'stop' | 'start', Error>> = {};
  private async step(verb: 'pause' | 'resume' | 'stop' | 'start', id: string): Promise<void> {
    this.calls.push(`${verb} ${id}`);
    this.started[verb]?.open();
    await this.gates[verb]?.promise;
    const err = this.fail[verb];
    if (err) throw err;
  }
  async create(spec: { id: string }): Promise<ContainerInfo> {
    this.status.set(spec.id, 'running');
    return { id: spec.id, status: 'running' };
  }
  async destroy(id: string): Promise<void> {
    this.destroyed.push(id);
    this.status.delete(id);
  }
  async inspect(id: string): Promise<ContainerInfo> {
    return { id, status: this.status.get(id) ?? 'missing' };
  }
  async list(): Promise<string[]> {
    return [...this.status].filter(([, s]) => s !== 'stopped').map(([id]) => id);
  }
  async listLeftovers(): Promise<string[]> {
    return [...this.status.keys()];
  }
  async update(): Promise<void> {}
  async pause(id: string): Promise<void> {
    await this.step('pause', id);
    this.status.set(id, 'paused');
  }
  async resume(id: string): Promise<void> {
    await this.step('resume', id);
    this.status.set(id, 'running');
  }
  async stop(id: string): Promise<void> {
    await this.step('stop', id);
    this.status.set(id, 'stopped');
  }
  async start(id: string): Promise<ContainerInfo> {
    await this.step('start', id);
    this.status.set(id, 'running');
    return { id, status: 'running' };
  }
  async exportChanges(): Promise<void> {}
  async prepareVolume(): Promise<void> {}
  async removeVolume(): Promise<void> {}
  async oomKills(): Promise<number> {
    return 0;
  }
  agentEndpoint(id: string): AgentEndpoint {
    return { kind: 'unix', path: `/nonexistent/${id}.sock` };
  }
}

class FakeConn {
  private listeners: Array<(err?: Error) => void> = [];
  async listProcesses() {
    return [];
  }
  onClose(l: (err?: Error) => void) {
    this.listeners.push(l);
  }
  close() {
    for (const l of this.listeners.splice(0)) l();
  }
}

const silent = { info() {}, warn() {}, error() {} };

describe('lifecycle verbs on the state machine', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-lifecycle-'));
  let store: SandboxStore;
  let runtime: FakeRuntime;
  let manager: SandboxManager;
  let connects = 0;
  let n = 0;
  const make = () =>
    new SandboxManager(
      loadConfig({ dataDir: dir, pools: {} }),
      store,
      runtime,
      { resolve: async () => ({ layers: [{ path: '/layers/busybox' }], config: { env: {} } }) },
      async () => {
        connects++;
        return new FakeConn() as unknown as AgentConnection;
      },
      silent,
    );

  beforeEach(() => {
    store = new SandboxStore(openDb(path.join(dir, `db-${n++}.sqlite`)));
    runtime = new FakeRuntime();
    connects = 0;
    manager = make();
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('pause stores the lifetime left and sets the retention deadline; resume gives the lifetime back', async () => {
    const rec = await manager.create(SYSTEM_CONTEXT, { template: 'busybox', timeoutMs: 60_000, lifecycle: { deleteAfterMs: 5000 } });
    const p = await manager.pause(SYSTEM_CONTEXT, rec.id);
    assert.equal(p.state, 'paused');
    assert.ok(p.remainingMs! > 59_000 && p.remainingMs! <= 60_000);
    assert.ok(Math.abs(p.expiresAt - (Date.now() + 5000)) < 500, 'expiresAt is the retention deadline while paused');
    const r = await manager.resume(SYSTEM_CONTEXT, rec.id);
    assert.ok(Math.abs(r.expiresAt - (Date.now() + p.remainingMs!)) < 500);
    // Idempotent verbs do nothing; the wrong verb names the state.
    assert.equal((await manager.resume(SYSTEM_CONTEXT, rec.id)).state, 'running');
    await manager.stop(SYSTEM_CONTEXT, rec.id);
    assert.equal((await manager.stop(SYSTEM_CONTEXT, rec.id)).state, 'stopped');
    await assert.rejects(manager.resume(SYSTEM_CONTEXT, rec.id), (e: any) => e.code === 'conflict' && e.details.state === 'stopped' && /cannot resume/.test(e.message));
    await assert.rejects(manager.pause(SYSTEM_CONTEXT, rec.id), (e: any) => e.code === 'conflict' && /is stopped/.test(e.message));
    assert.deepEqual(runtime.calls, [`pause ${rec.id}`, `resume ${rec.id}`, `stop ${rec.id}`]);
  });

  it('a resume asked while a pause runs waits for it, then resumes: one operation at a time', async () => {
    const rec = await manager.create(SYSTEM_CONTEXT, { template: 'busybox' });
    runtime.gates.pause = new Gate();
    runtime.started.pause = new Gate();
    const pause = manager.pause(SYSTEM_CONTEXT, rec.id);
    await runtime.started.pause.promise;
    assert.equal(store.get(rec.id)!.state, 'pausing');
    const resume = manager.resume(SYSTEM_CONTEXT, rec.id);
    await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(runtime.calls, [`pause ${rec.id}`], 'the resume has not started');
    runtime.gates.pause.open();
    assert.equal((await pause).state, 'paused');
    assert.equal((await resume).state, 'running');
    assert.deepEqual(runtime.calls, [`pause ${rec.id}`, `resume ${rec.id}`]);
  });

  it('a kill during a start wins: the start answers 409, the sandbox is destroyed once, after the start settled', async () => {
    const rec = await manager.create(SYSTEM_CONTEXT, { template: 'busybox' });
    await manager.stop(SYSTEM_CONTEXT, rec.id);
    runtime.gates.start = new Gate();
    runtime.started.start = new Gate();
    const start = manager.start(SYSTEM_CONTEXT, rec.id);
    await runtime.started.start.promise;
    const kill = manager.kill(SYSTEM_CONTEXT, rec.id);
    await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(runtime.destroyed, [], 'no destroy while the start is in the runtime');
    runtime.gates.start.open();
    assert.equal((await kill).state, 'killed');
    await assert.rejects(start, (e: any) => e.code === 'conflict' && /was killed before it was running/.test(e.message));
    assert.deepEqual(runtime.destroyed, [rec.id]);
    assert.equal(store.get(rec.id)!.state, 'killed');
  });

  it('a pause the runtime refuses leaves it running with its clock; a failed start leaves it stopped', async () => {
    const rec = await manager.create(SYSTEM_CONTEXT, { template: 'busybox', timeoutMs: 30_000 });
    runtime.fail.pause = new Error('freezer broke');
    await assert.rejects(manager.pause(SYSTEM_CONTEXT, rec.id), /freezer broke/);
    const now = store.get(rec.id)!;
    assert.equal(now.state, 'running');
    assert.ok(now.expiresAt > Date.now() + 29_000);
    delete runtime.fail.pause;
    await manager.stop(SYSTEM_CONTEXT, rec.id);
    const deadline = store.get(rec.id)!.expiresAt;
    runtime.fail.start = new Error('no loop device');
    await assert.rejects(manager.start(SYSTEM_CONTEXT, rec.id), /no loop device/);
    assert.equal(store.get(rec.id)!.state, 'stopped');
    assert.equal(store.get(rec.id)!.expiresAt, deadline, 'the retention deadline is unchanged');
  });

  it('a start counts the memory quota again; a stopped sandbox holds none', async () => {
    const alice = requestContext({ keyId: 'k', owner: 'alice', createAs: 'alice', admin: false, limits: { maxSandboxes: null, maxMemoryMb: 600, ratePerMinute: null } });
    const a = await manager.create(alice, { template: 'busybox', resources: { memoryMb: 512 } });
    await manager.stop(alice, a.id);
    const b = await manager.create(alice, { template: 'busybox', resources: { memoryMb: 512 } });
    await assert.rejects(manager.start(alice, a.id), (e: any) => e.code === 'rate_limited');
    assert.equal(store.get(a.id)!.state, 'stopped');
    await manager.kill(alice, b.id);
    assert.equal((await manager.start(alice, a.id)).state, 'running');
  });

  it('autoResume: use() wakes a paused or stopped sandbox; without it, 409 naming the state', async () => {
    const plain = await manager.create(SYSTEM_CONTEXT, { template: 'busybox' });
    await manager.pause(SYSTEM_CONTEXT, plain.id);
    await assert.rejects(manager.use(SYSTEM_CONTEXT, plain.id, 'run a command'), (e: any) => e.code === 'conflict' && e.details.state === 'paused');
    const auto = await manager.create(SYSTEM_CONTEXT, { template: 'busybox', lifecycle: { autoResume: true } });
    await manager.pause(SYSTEM_CONTEXT, auto.id);
    assert.equal((await manager.use(SYSTEM_CONTEXT, auto.id, 'run a command')).rec.state, 'running');
    await manager.stop(SYSTEM_CONTEXT, auto.id);
    const before = connects;
    const [u1, u2] = await Promise.all([manager.use(SYSTEM_CONTEXT, auto.id, 'read'), manager.use(SYSTEM_CONTEXT, auto.id, 'read')]);
    assert.equal(u1.rec.state, 'running');
    assert.equal(u2.rec.state, 'running');
    assert.equal(runtime.calls.filter((c) => c.startsWith('start')).length, 1, 'two calls, one start');
    assert.ok(connects > before, 'a started sandbox is connected to before it counts as running');
  });

  it('the reaper applies onTimeout (pause, stop, kill), idleness, and retention', async () => {
    const p = await manager.create(SYSTEM_CONTEXT, { template: 'busybox', timeoutMs: 1000, lifecycle: { onTimeout: 'pause' } });
    const s = await manager.create(SYSTEM_CONTEXT, { template: 'busybox', timeoutMs: 1000, lifecycle: { onTimeout: 'stop', deleteAfterMs: 3000 } });
    const k = await manager.create(SYSTEM_CONTEXT, { template: 'busybox', timeoutMs: 1000 });
    const idle = await manager.create(SYSTEM_CONTEXT, { template: 'busybox', timeoutMs: 600_000, lifecycle: { onTimeout: 'stop', idleMs: 1000 } });
    const busy = await manager.create(SYSTEM_CONTEXT, { template: 'busybox', timeoutMs: 600_000, lifecycle: { onTimeout: 'stop', idleMs: 1000 } });
    const release = manager.hold(busy.id);
    await manager.reapExpired(Date.now() + 1500);
    assert.equal(store.get(p.id)!.state, 'paused');
    assert.equal(store.get(s.id)!.state, 'stopped');
    assert.equal(store.get(k.id)!.state, 'expired');
    assert.equal(store.get(k.id)!.endReason, 'timeout passed');
    assert.equal(store.get(idle.id)!.state, 'stopped');
    assert.equal(store.get(busy.id)!.state, 'running', 'a held sandbox is not idle');
    release();
    // Woken after its timeout passed, a sandbox gets its whole timeout again.
    const woken = await manager.resume(SYSTEM_CONTEXT, p.id);
    assert.ok(woken.expiresAt > Date.now() + 500);
    await manager.reapExpired(Date.now() + 5000);
    assert.equal(store.get(s.id)!.state, 'expired');
    assert.match(store.get(s.id)!.endReason!, /kept stopped for 3 s \(lifecycle.deleteAfterMs\) and deleted/);
    assert.ok(runtime.destroyed.includes(s.id));
  });

  it('a filesystem snapshot is one queued operation: snapshotting while it copies, running after; paused stays paused; stopped is 409', async () => {
    await assert.rejects(
      manager.snapshotFiles(SYSTEM_CONTEXT, (await manager.create(SYSTEM_CONTEXT, { template: 'busybox' })).id, async () => 'never'),
      (e: any) => e.code === 'unsupported' && e.details.capability === 'snapshot',
    );
    runtime.capabilities.snapshot = true;
    const rec = await manager.create(SYSTEM_CONTEXT, { template: 'busybox' });
    const copying = new Gate();
    const seen: string[] = [];
    const snap = manager.snapshotFiles(SYSTEM_CONTEXT, rec.id, async (r) => {
      seen.push(`${r.id} ${store.get(rec.id)!.state}`);
      await copying.promise;
      return 'layer';
    });
    await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(seen, [`${rec.id} snapshotting`]);
    // A command asked meanwhile waits for the copy instead of answering 409.
    let used = false;
    const use = manager.use(SYSTEM_CONTEXT, rec.id, 'run a command').then((u) => ((used = true), u));
    await new Promise((r) => setTimeout(r, 5));
    assert.equal(used, false, 'the command waits for the snapshot');
    copying.open();
    assert.equal(await snap, 'layer');
    assert.equal((await use).rec.state, 'running');
    assert.equal(store.get(rec.id)!.state, 'running');

    // A pause asked meanwhile queues behind the copy: nothing freezes or thaws under it.
    const again = new Gate();
    const snap2 = manager.snapshotFiles(SYSTEM_CONTEXT, rec.id, async () => again.promise);
    const pause = manager.pause(SYSTEM_CONTEXT, rec.id);
    await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(runtime.calls, [], 'the pause waits for the snapshot');
    again.open();
    await snap2;
    assert.equal((await pause).state, 'paused');

    // Paused: the capture runs on the frozen sandbox, which stays paused.
    assert.equal(await manager.snapshotFiles(SYSTEM_CONTEXT, rec.id, async () => store.get(rec.id)!.state), 'paused');
    assert.equal(store.get(rec.id)!.state, 'paused');
    assert.deepEqual(runtime.calls, [`pause ${rec.id}`], 'nothing thawed it');

    // A capture that fails leaves a running sandbox running.
    await manager.resume(SYSTEM_CONTEXT, rec.id);
    await assert.rejects(manager.snapshotFiles(SYSTEM_CONTEXT, rec.id, async () => { throw new Error('disk full'); }), /disk full/);
    assert.equal(store.get(rec.id)!.state, 'running');

    // Stopped: 409 naming the state, and the capture never runs.
    await manager.stop(SYSTEM_CONTEXT, rec.id);
    let ran = false;
    await assert.rejects(
      manager.snapshotFiles(SYSTEM_CONTEXT, rec.id, async () => (ran = true)),
      (e: any) => e.code === 'conflict' && e.details.state === 'stopped',
    );
    assert.equal(ran, false);
  });

  it('a kill during a snapshot waits for the copy, then wins: the snapshot answers 409', async () => {
    runtime.capabilities.snapshot = true;
    const rec = await manager.create(SYSTEM_CONTEXT, { template: 'busybox' });
    const copying = new Gate();
    const started = new Gate();
    const snap = manager.snapshotFiles(SYSTEM_CONTEXT, rec.id, async () => {
      started.open();
      await copying.promise;
    });
    await started.promise;
    const kill = manager.kill(SYSTEM_CONTEXT, rec.id);
    await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(runtime.destroyed, [], 'no destroy while the copy runs');
    copying.open();
    assert.equal((await kill).state, 'killed');
    await assert.rejects(snap, (e: any) => e.code === 'conflict');
    assert.deepEqual(runtime.destroyed, [rec.id]);
  });

  it('a restart puts a sandbox cut off while snapshotting back to running, thawing it if still frozen', async () => {
    const frozen = (await manager.create(SYSTEM_CONTEXT, { template: 'busybox' })).id;
    const thawed = (await manager.create(SYSTEM_CONTEXT, { template: 'busybox' })).id;
    const gone = (await manager.create(SYSTEM_CONTEXT, { template: 'busybox' })).id;
    for (const id of [frozen, thawed, gone]) store.transition(id, ['running'], 'snapshotting');
    runtime.status.set(frozen, 'paused');
    runtime.status.delete(gone);
    runtime.calls = [];
    await make().recover();
    assert.equal(store.get(frozen)!.state, 'running');
    assert.equal(store.get(thawed)!.state, 'running');
    assert.equal(store.get(gone)!.state, 'failed');
    assert.deepEqual(runtime.calls, [`resume ${frozen}`]);
    assert.equal(runtime.status.get(frozen), 'running');
  });

  it('a restart settles every sleeping or half-done row against what the runtime holds, without touching paused agents', async () => {
    const ids: Record<string, string> = {};
    for (const name of ['paused', 'stopped', 'pausing', 'stopping', 'starting', 'rebooted', 'lost']) {
      ids[name] = (await manager.create(SYSTEM_CONTEXT, { template: 'busybox' })).id;
    }
    await manager.pause(SYSTEM_CONTEXT, ids.paused!);
    await manager.stop(SYSTEM_CONTEXT, ids.stopped!);
    await manager.pause(SYSTEM_CONTEXT, ids.rebooted!);
    await manager.stop(SYSTEM_CONTEXT, ids.lost!);
    // Rows the dead daemon left mid-step, and what a host reboot or a lost disk looks like.
    store.transition(ids.pausing!, ['running'], 'pausing', { remainingMs: 1000 });
    runtime.status.set(ids.pausing!, 'paused');
    store.transition(ids.stopping!, ['running'], 'stopping', { remainingMs: 1000 });
    await manager.stop(SYSTEM_CONTEXT, ids.starting!);
    store.transition(ids.starting!, ['stopped'], 'starting');
    runtime.status.set(ids.starting!, 'running');
    runtime.status.set(ids.rebooted!, 'stopped');
    runtime.status.delete(ids.lost!);
    runtime.calls = [];
    connects = 0;

    const r = await make().recover();
    const state = (k: string) => store.get(ids[k]!)!.state;
    assert.equal(state('paused'), 'paused');
    assert.equal(state('stopped'), 'stopped');
    assert.equal(state('pausing'), 'paused');
    assert.equal(state('stopping'), 'stopped');
    assert.equal(state('starting'), 'stopped');
    assert.equal(state('rebooted'), 'stopped', 'paused, but only its disk is left: stopped');
    assert.equal(state('lost'), 'failed');
    assert.deepEqual(new Set(r.kept), new Set([ids.paused, ids.stopped, ids.pausing, ids.stopping, ids.starting, ids.rebooted]));
    assert.deepEqual(r.ended, [ids.lost]);
    assert.equal(connects, 0, 'no agent was connected to');
    assert.ok(!r.cleaned.some((id) => r.kept.includes(id)), 'kept sandboxes are not cleaned up');
  });
});

describe('lifecycle policy arithmetic', () => {
  it('resolves defaults, with the daemon retention', () => {
    assert.deepEqual(resolvePolicy(undefined), { onTimeout: 'kill', autoResume: false, idleMs: null, deleteAfterMs: DEFAULT_DELETE_AFTER_MS });
    assert.deepEqual(resolvePolicy({ onTimeout: 'stop', idleMs: 5000 }, 1234), { onTimeout: 'stop', autoResume: false, idleMs: 5000, deleteAfterMs: 1234 });
    assert.deepEqual(parseStoredPolicy(null), resolvePolicy(undefined));
    assert.deepEqual(parseStoredPolicy('{"onTimeout":"weird","autoResume":1}'), resolvePolicy(undefined), 'a bad stored value falls back');
  });

  it('wakes with what was left, the whole timeout when nothing was, or what is asked', () => {
    assert.equal(lifetimeAtWake(42_000, 60_000), 42_000);
    assert.equal(lifetimeAtWake(0, 60_000), 60_000);
    assert.equal(lifetimeAtWake(300, 60_000), 60_000);
    assert.equal(lifetimeAtWake(null, 60_000), 60_000);
    assert.equal(lifetimeAtWake(42_000, 60_000, 5000), 5000);
  });

  it('is due at its timeout, or after idleMs without use unless busy', () => {
    const lifecycle = resolvePolicy({ idleMs: 1000 });
    assert.equal(dueReason({ expiresAt: 100, lifecycle }, 90, false, 100), 'timeout');
    assert.equal(dueReason({ expiresAt: 5000, lifecycle }, 0, false, 999), null);
    assert.equal(dueReason({ expiresAt: 5000, lifecycle }, 0, false, 1000), 'idle');
    assert.equal(dueReason({ expiresAt: 5000, lifecycle }, 0, true, 1000), null);
    assert.equal(dueReason({ expiresAt: 5000, lifecycle: resolvePolicy({}) }, 0, false, 4000), null);
  });

  it('tracks holds: busy until every hold is released', () => {
    const a = new ActivityTracker();
    const r1 = a.hold('x');
    const r2 = a.hold('x');
    r1();
    r1();
    assert.equal([...a.entries()][0]![1].busy, true);
    r2();
    assert.equal([...a.entries()][0]![1].busy, false);
    a.forget('x');
    assert.equal([...a.entries()].length, 0);
  });
});
