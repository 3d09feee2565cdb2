/**
 * The sandbox service's state machine under races, made deterministic with a
 * runtime whose steps wait on gates (a fake is fine here: this is the pure
 * ordering logic; the same races run against real crun sandboxes in
 * test/integration/sandboxes/races.test.ts). The store is a real SQLite file.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, beforeEach, describe, it } from 'node:test';
import { loadConfig } from '../../../src/config/index.js';
import { openDb, type Db } from '../../../src/store/db.js';
import { SandboxStore } from '../../../src/sandboxes/store.js';
import { SandboxManager } from '../../../src/sandboxes/manager.js';
import { requestContext, SYSTEM_CONTEXT } from '../../../src/auth/context.js';
import type { Principal } from '../../../src/auth/principal.js';
import type { AgentConnection, AgentEndpoint } from '../../../src/agent/types.js';
import type { ContainerInfo, ContainerSpec, RuntimeDriver } from '../../../src/runtime/types.js';

class Gate {
  private release!: () => void;
  readonly promise = new Promise<void>((r) => (this.release = r));
  open(): void {
    this.release();
  }
}

class FakeRuntime implements RuntimeDriver {
  kind = 'fake';
  name = 'fake 1';
  capabilities = { isolation: 'container' as const, pause: false, stop: false, volumes: false, snapshot: false, memorySnapshot: false, updateResources: false, network: ['none' as const], exportChanges: false, fileHandoff: false, maxLayers: 4 };
  running = new Set<string>();
  destroyed: string[] = [];
  createGate: Gate | undefined;
  createStarted = new Gate();
  failCreate: Error | undefined;
  async create(spec: ContainerSpec, signal?: AbortSignal): Promise<ContainerInfo> {
    this.createStarted.open();
    if (this.createGate) {
      const aborted = new Promise<never>((_, reject) => signal?.addEventListener('abort', () => reject(new Error('aborted')), { once: true }));
      await Promise.race([this.createGate.promise, aborted]);
    }
    if (this.failCreate) throw this.failCreate;
    this.running.add(spec.id);
    return { id: spec.id, status: 'running', pid: 1 };
  }
  async destroy(id: string): Promise<void> {
    this.destroyed.push(id);
    this.running.delete(id);
  }
  async inspect(id: string): Promise<ContainerInfo> {
    return { id, status: this.running.has(id) ? 'running' : 'missing' };
  }
  async list(): Promise<string[]> {
    return [...this.running];
  }
  async listLeftovers(): Promise<string[]> {
    return [];
  }
  async update(): Promise<void> {}
  async pause(): Promise<void> {}
  async resume(): Promise<void> {}
  async stop(): Promise<void> {}
  async start(id: string): Promise<ContainerInfo> {
    return { id, status: 'running' };
  }
  async prepareVolume(): Promise<void> {}
  async removeVolume(): Promise<void> {}
  async exportChanges(): Promise<void> {}
  async oomKills(): Promise<number> {
    return 0;
  }
  agentEndpoint(id: string): AgentEndpoint {
    return { kind: 'unix', path: `/nonexistent/${id}.sock` };
  }
}

class FakeConn {
  closed = false;
  private listeners: Array<(err?: Error) => void> = [];
  async ping() {
    return { version: 'fake' };
  }
  async listProcesses() {
    return [];
  }
  onClose(l: (err?: Error) => void) {
    this.listeners.push(l);
  }
  close() {
    this.closed = true;
    for (const l of this.listeners.splice(0)) l();
  }
}

const silent = { info() {}, warn() {}, error() {} };
const tenant = (owner: string, limits: Partial<Principal['limits']> = {}): Principal => ({
  keyId: `key_${owner}`,
  owner,
  createAs: owner,
  admin: false,
  limits: { maxSandboxes: null, maxMemoryMb: null, ratePerMinute: null, ...limits },
});

describe('SandboxManager state machine', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-manager-'));
  let db: Db;
  let store: SandboxStore;
  let runtime: FakeRuntime;
  let manager: SandboxManager;
  let connectGate: Gate | undefined;
  const conns: FakeConn[] = [];
  let n = 0;

  beforeEach(() => {
    db = openDb(path.join(dir, `db-${n++}.sqlite`));
    store = new SandboxStore(db);
    runtime = new FakeRuntime();
    connectGate = undefined;
    const config = loadConfig({ dataDir: dir, pools: {} });
    manager = new SandboxManager(
      config,
      store,
      runtime,
      { resolve: async () => ({ layers: [{ path: '/layers/busybox' }], config: { env: {} } }) },
      async () => {
        await connectGate?.promise;
        const c = new FakeConn();
        conns.push(c);
        return c as unknown as AgentConnection;
      },
      silent,
    );
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  async function creatingId(): Promise<string> {
    await runtime.createStarted.promise;
    const row = store.listByStates(['creating'])[0];
    assert.ok(row, 'a creating row');
    return row.id;
  }

  it('a kill during the runtime create wins: the create fails with a conflict and nothing comes back to life', async () => {
    runtime.createGate = new Gate();
    const create = manager.create(SYSTEM_CONTEXT, { template: 'busybox' });
    const id = await creatingId();
    const killed = await manager.kill(SYSTEM_CONTEXT, id);
    assert.equal(killed.state, 'killed');
    assert.equal(killed.endReason, 'killed by request');
    await assert.rejects(create, (e: any) => e.code === 'conflict' && /was killed while it was being created/.test(e.message) && e.details.state === 'killed');
    assert.equal(store.get(id)!.state, 'killed');
    assert.deepEqual(runtime.destroyed, [id], 'destroyed once, by the create');
    assert.equal(runtime.running.size, 0);
    await assert.rejects(manager.use(SYSTEM_CONTEXT, id, 'run a command'), (e: any) => e.code === 'conflict' && e.details.state === 'killed');
  });

  it('a kill after the container started but before the agent answered also wins', async () => {
    connectGate = new Gate();
    const create = manager.create(SYSTEM_CONTEXT, { template: 'busybox' });
    const id = await creatingId();
    // Let the runtime create finish; the connect is still held.
    await new Promise((r) => setTimeout(r, 5));
    assert.ok(runtime.running.has(id));
    const kill = manager.kill(SYSTEM_CONTEXT, id);
    connectGate.open();
    assert.equal((await kill).state, 'killed');
    await assert.rejects(create, (e: any) => e.code === 'conflict');
    assert.equal(store.get(id)!.state, 'killed');
    assert.equal(runtime.running.size, 0);
    assert.ok(conns.every((c) => c.closed), 'the connection made for it is closed');
  });

  it('two concurrent kills end the sandbox once; both answer killed', async () => {
    const rec = await manager.create(SYSTEM_CONTEXT, { template: 'busybox' });
    const [a, b] = await Promise.all([manager.kill(SYSTEM_CONTEXT, rec.id), manager.kill(SYSTEM_CONTEXT, rec.id)]);
    assert.equal(a.state, 'killed');
    assert.equal(b.state, 'killed');
    assert.deepEqual(runtime.destroyed, [rec.id]);
    // And once more, later: idempotent.
    assert.equal((await manager.kill(SYSTEM_CONTEXT, rec.id)).state, 'killed');
    assert.deepEqual(runtime.destroyed, [rec.id]);
  });

  it('an expiry racing a kill: exactly one terminal state, one reason, one destroy', async () => {
    const rec = await manager.create(SYSTEM_CONTEXT, { template: 'busybox', timeoutMs: 1000 });
    await Promise.all([manager.reapExpired(Date.now() + 2000), manager.kill(SYSTEM_CONTEXT, rec.id)]);
    const end = store.get(rec.id)!;
    assert.ok(end.state === 'expired' || end.state === 'killed');
    assert.equal(end.endReason, end.state === 'expired' ? 'timeout passed' : 'killed by request');
    assert.deepEqual(runtime.destroyed, [rec.id]);
  });

  it('a failed create ends failed with the reason, and cleans up', async () => {
    runtime.failCreate = new Error('crun exploded');
    await assert.rejects(manager.create(SYSTEM_CONTEXT, { template: 'busybox' }), /crun exploded/);
    const [row] = store.listAll();
    assert.equal(row!.state, 'failed');
    assert.match(row!.endReason!, /create failed: crun exploded/);
    assert.deepEqual(runtime.destroyed, [row!.id]);
  });

  it('setTimeout on an ended sandbox is a conflict naming the state', async () => {
    const rec = await manager.create(SYSTEM_CONTEXT, { template: 'busybox' });
    await manager.kill(SYSTEM_CONTEXT, rec.id);
    assert.throws(() => manager.setTimeout(SYSTEM_CONTEXT, rec.id, 5000), (e: any) => e.code === 'conflict' && /is killed/.test(e.message));
  });

  it('a restart finds a half-made sandbox and fails it, removing what the runtime has', async () => {
    runtime.createGate = new Gate();
    void manager.create(SYSTEM_CONTEXT, { template: 'busybox' }).catch(() => undefined);
    const id = await creatingId();
    // A new daemon on the same store (the old one "died"): its recover must end the row and clean up.
    runtime.running.add(id);
    const fresh = new SandboxManager(loadConfig({ dataDir: dir, pools: {} }), store, runtime, { resolve: async () => ({ layers: [], config: { env: {} } }) }, async () => new FakeConn() as unknown as AgentConnection, silent);
    const r = await fresh.recover();
    assert.deepEqual(r.ended, [id]);
    assert.equal(store.get(id)!.state, 'failed');
    assert.match(store.get(id)!.endReason!, /daemon restarted while the sandbox was being created/);
    assert.ok(runtime.destroyed.includes(id));
    assert.equal(runtime.running.size, 0);
    runtime.createGate.open();
  });

  it('tenants see, use and kill only their own sandboxes; quotas are the service\'s rule', async () => {
    const alice = requestContext(tenant('alice', { maxSandboxes: 1 }));
    const bob = requestContext(tenant('bob'));
    const a = await manager.create(alice, { template: 'busybox' });
    assert.equal(a.owner, 'alice');
    await assert.rejects(manager.create(alice, { template: 'busybox' }), (e: any) => e.code === 'rate_limited');
    assert.throws(() => manager.get(bob, a.id), (e: any) => e.code === 'not_found');
    await assert.rejects(manager.kill(bob, a.id), (e: any) => e.code === 'not_found');
    await assert.rejects(manager.use(bob, a.id, 'run a command'), (e: any) => e.code === 'not_found');
    assert.deepEqual(manager.list(bob).map((r) => r.id), []);
    assert.deepEqual(manager.list(alice).map((r) => r.id), [a.id]);
    assert.deepEqual(manager.list(SYSTEM_CONTEXT).map((r) => r.id), [a.id]);
    // A principal with no owner and no admin flag (a public path) sees nothing.
    const nobody = requestContext({ ...tenant('x'), owner: null, createAs: null });
    assert.deepEqual(manager.list(nobody), []);
    await manager.kill(alice, a.id);
    assert.equal((await manager.create(alice, { template: 'busybox' })).owner, 'alice', 'the quota counts live sandboxes only');
  });

  it('a service call without a RequestContext does not compile', () => {
    // Never called: tsc checks these lines, and the build fails if either ever compiles.
    const compileOnly = () => {
      // @ts-expect-error: the context is required
      manager.get('sbx-000000000000');
      // @ts-expect-error: a plain object is not a RequestContext (it can only be made by requestContext())
      manager.list({ principal: SYSTEM_CONTEXT.principal });
    };
    assert.equal(typeof compileOnly, 'function');
  });
});
