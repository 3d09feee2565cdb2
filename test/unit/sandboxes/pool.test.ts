/**
 * The warm pool's rules without containers: what a pooled sandbox can be
 * given at claim (pool-fit), how pools are configured, and how the pool
 * refills (one at a time, never during a user create), drops stale or dead
 * entries and falls back.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parsePools, type ResourceLimits } from '../../../src/config/index.js';
import { poolFit } from '../../../src/sandboxes/pool-fit.js';
import { WarmPool } from '../../../src/sandboxes/pool.js';
import type { AgentConnection, AgentEndpoint } from '../../../src/agent/types.js';
import type { ContainerSpec, RuntimeDriver } from '../../../src/runtime/types.js';
import type { TemplateInfo } from '../../../src/templates/types.js';

const BASE: ResourceLimits = { cpus: 1, memoryMb: 512, pids: 256, diskMb: 2048 };

describe('poolFit', () => {
  test('equal limits: claim with nothing to change', () => {
    assert.deepEqual(poolFit(BASE, { ...BASE }), { ok: true, update: {} });
  });

  test('cpus and pids are changed at claim, only the fields that differ', () => {
    assert.deepEqual(poolFit(BASE, { ...BASE, cpus: 0.5, pids: 64 }), { ok: true, update: { cpus: 0.5, pids: 64 } });
  });

  test('memory is changed at claim when the tmpfs sizes it implies stay the same', () => {
    // From 1 GiB up, /dev and /dev/shm sizes are capped: any of those limits implies the same mounts.
    const big = { ...BASE, memoryMb: 1024 };
    assert.deepEqual(poolFit(big, { ...BASE, memoryMb: 4096 }), { ok: true, update: { memoryMb: 4096 } });
  });

  test('memory that would resize /dev or /dev/shm means a cold sandbox', () => {
    const r = poolFit(BASE, { ...BASE, memoryMb: 256 });
    assert.equal(r.ok, false);
    assert.match((r as { reason: string }).reason, /memoryMb/);
  });

  test('any other field, including ones added later, must be equal', () => {
    const withDisk = { ...BASE, diskMb: 1024 } as ResourceLimits;
    assert.equal(poolFit(BASE, withDisk).ok, false);
    assert.match((poolFit(BASE, withDisk) as { reason: string }).reason, /diskMb/);
    assert.deepEqual(poolFit(withDisk, { ...withDisk }), { ok: true, update: {} });
    const nested = { ...BASE, devices: { gpu: 1 } } as unknown as ResourceLimits;
    assert.deepEqual(poolFit(nested, { ...BASE, devices: { gpu: 1 } } as unknown as ResourceLimits), { ok: true, update: {} });
    assert.equal(poolFit(nested, { ...BASE, devices: { gpu: 2 } } as unknown as ResourceLimits).ok, false);
  });
});

describe('parsePools', () => {
  test('pairs, comma lists, later pairs win, 0 kept as off', () => {
    assert.deepEqual(parsePools(['busybox=4,debian=2', 'debian=0']), { busybox: 4, debian: 0 });
    assert.deepEqual(parsePools(['']), {});
  });

  test('a pool may name its isolation: <template>:<isolation>=<size>', () => {
    assert.deepEqual(parsePools(['busybox=4,busybox:gvisor=2', 'debian:container=1']), { busybox: 4, 'busybox:gvisor': 2, 'debian:container': 1 });
  });

  test('bad pairs are refused with the pair in the message', () => {
    for (const bad of ['busybox', 'busybox=-1', 'busybox=x', 'Bad=1', 'busybox=100000', 'busybox:vm=1', 'busybox:=1', 'busybox:gvisor:x=1']) {
      assert.throws(() => parsePools([bad]), new RegExp(bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
    }
  });
});

/** A runtime that makes nothing: records calls, and can be told to fail or be slow. */
class FakeRuntime implements Pick<RuntimeDriver, 'kind' | 'capabilities' | 'create' | 'destroy' | 'update' | 'agentEndpoint'> {
  kind = 'fake';
  capabilities = { isolation: 'container' as const, pause: false, stop: false, volumes: false, snapshot: false, memorySnapshot: false, updateResources: true, network: ['none' as const], exportChanges: false, fileHandoff: false, maxLayers: 1 };
  created: string[] = [];
  destroyed: string[] = [];
  updates: Array<{ id: string; resources: object }> = [];
  concurrent = 0;
  maxConcurrent = 0;
  failUpdate = false;
  gate: Promise<void> = Promise.resolve();

  async create(spec: ContainerSpec) {
    this.concurrent++;
    this.maxConcurrent = Math.max(this.maxConcurrent, this.concurrent);
    await this.gate;
    await new Promise((r) => setTimeout(r, 1));
    this.concurrent--;
    this.created.push(spec.id);
    return { id: spec.id, status: 'running' as const };
  }
  async destroy(id: string) {
    this.destroyed.push(id);
  }
  async update(id: string, resources: object) {
    if (this.failUpdate) throw new Error('cgroup write refused');
    this.updates.push({ id, resources });
  }
  agentEndpoint(id: string) {
    return { kind: 'unix' as const, path: `/run/${id}.sock` };
  }
}

class FakeConn {
  closed = false;
  dead = false;
  async ping() {
    if (this.dead) throw new Error('connection reset');
    return { version: 'fake' };
  }
  private listeners: Array<(err?: Error) => void> = [];
  onClose(l: (err?: Error) => void) {
    this.listeners.push(l);
  }
  close() {
    if (this.closed) return;
    this.closed = true;
    for (const l of this.listeners) l();
  }
  die() {
    this.closed = true;
    for (const l of this.listeners) l(new Error('agent died'));
  }
}

function setup(sizes: Record<string, number>, opts: { status?: TemplateInfo['status']; quietMs?: number } = {}) {
  const runtime = new FakeRuntime();
  const conns = new Map<string, FakeConn>();
  const template: TemplateInfo = { name: 'busybox', description: '', status: opts.status ?? 'ready', builtAt: 1 };
  const silent = { info() {}, warn() {}, error() {} };
  const pool = new WarmPool(sizes, {
    runtime: runtime as unknown as RuntimeDriver,
    templates: { get: () => template, layers: async () => [{ path: '/rootfs' }], config: () => ({}) },
    connectAgent: async (ep: AgentEndpoint) => {
      const socket = ep.kind === 'unix' ? ep.path : '';
      const c = new FakeConn();
      conns.set(socket.slice('/run/'.length, -'.sock'.length), c);
      return c as unknown as AgentConnection;
    },
    defaultResources: BASE,
    buildTemplates: false,
    log: silent,
    tickMs: 60_000,
    ...(opts.quietMs !== undefined ? { quietMs: opts.quietMs } : {}),
  });
  return { pool, runtime, conns, template };
}

async function until(cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 2));
  }
}

const readyOf = (pool: WarmPool) => pool.stats()[0]!.ready;

describe('WarmPool', () => {
  test('pools are per template and isolation; one for an isolation the host lacks fails its starts, not the others', async () => {
    const { pool, runtime } = setup({ busybox: 1, 'busybox:container': 2, 'busybox:microvm': 1 });
    pool.start();
    // `busybox` is the default isolation's pool, the same as `busybox:container`: the later setting wins.
    const byIso = () => Object.fromEntries(pool.stats().map((p) => [p.isolation, p]));
    await until(() => byIso().container?.ready === 2 && (byIso().microvm?.startFailures ?? 0) > 0);
    assert.deepEqual(pool.stats().map((p) => [p.template, p.isolation, p.size]), [['busybox', 'container', 2], ['busybox', 'microvm', 1]]);
    assert.match(byIso().microvm!.lastError ?? '', /isolation "microvm" is not available here/);
    assert.equal(runtime.created.length, 2);
    assert.equal(await pool.claim('busybox', BASE, 'microvm'), null, 'nothing of that isolation');
    assert.ok(await pool.claim('busybox', BASE, 'container'));
    assert.ok(await pool.claim('busybox', BASE), 'no isolation: the default');
    await pool.close();
  });

  test('fills to its size one container at a time', async () => {
    const { pool, runtime } = setup({ busybox: 3 });
    pool.start();
    await until(() => readyOf(pool) === 3);
    assert.equal(runtime.maxConcurrent, 1);
    assert.equal(runtime.created.length, 3);
    await pool.close();
  });

  test('size 0 means no pool: nothing started, every claim misses quietly', async () => {
    const { pool, runtime } = setup({ busybox: 0 });
    pool.start();
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(pool.stats(), []);
    assert.equal(await pool.claim('busybox', BASE), null);
    assert.equal(runtime.created.length, 0);
    await pool.close();
  });

  test('a claim hands out a started container, with changed limits applied, and the pool refills', async () => {
    const { pool, runtime } = setup({ busybox: 2 });
    pool.start();
    await until(() => readyOf(pool) === 2);
    const c = await pool.claim('busybox', { ...BASE, pids: 32 });
    assert.ok(c && runtime.created.includes(c.id));
    assert.deepEqual(runtime.updates, [{ id: c.id, resources: { pids: 32 } }]);
    await until(() => readyOf(pool) === 2);
    const ids = new Set(runtime.created);
    assert.equal(ids.size, runtime.created.length, 'ids are never reused');
    assert.equal(pool.stats()[0]!.claims, 1);
    await pool.close();
  });

  test('limits the pool cannot apply: a miss, and the pooled containers stay', async () => {
    const { pool } = setup({ busybox: 1 });
    pool.start();
    await until(() => readyOf(pool) === 1);
    assert.equal(await pool.claim('busybox', { ...BASE, memoryMb: 128 }), null);
    assert.equal(readyOf(pool), 1);
    assert.equal(pool.stats()[0]!.misses, 1);
    await pool.close();
  });

  test('no refill while a user create is in flight', async () => {
    const { pool, runtime } = setup({ busybox: 2 });
    pool.userCreateStarted();
    pool.start();
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(runtime.created.length, 0);
    pool.userCreateEnded();
    await until(() => readyOf(pool) === 2);
    await pool.close();
  });

  test('after a user create, a refill waits for the quiet window', async () => {
    const { pool, runtime } = setup({ busybox: 1 }, { quietMs: 150 });
    pool.userCreateStarted();
    pool.start();
    pool.userCreateEnded();
    const ended = performance.now();
    await until(() => runtime.created.length === 1);
    const waited = performance.now() - ended;
    assert.ok(waited >= 140, `refill started ${waited.toFixed(0)} ms after the last user create`);
    await until(() => readyOf(pool) === 1);
    await pool.close();
  });

  test('a failed claim falls back (null), destroys the container and counts it', async () => {
    const { pool, runtime } = setup({ busybox: 1 });
    pool.start();
    await until(() => readyOf(pool) === 1);
    runtime.failUpdate = true;
    const id = runtime.created[0]!;
    assert.equal(await pool.claim('busybox', { ...BASE, cpus: 2 }), null);
    assert.equal(pool.stats()[0]!.fallbacks, 1);
    await until(() => runtime.destroyed.includes(id));
    await pool.close();
  });

  test('a claim pings the agent: one that died unnoticed is not handed out', async () => {
    const { pool, runtime, conns } = setup({ busybox: 1 });
    pool.start();
    await until(() => readyOf(pool) === 1);
    const first = runtime.created[0]!;
    conns.get(first)!.dead = true; // killed, but the close has not arrived yet
    assert.equal(await pool.claim('busybox', BASE), null);
    assert.equal(pool.stats()[0]!.fallbacks, 1);
    await until(() => runtime.destroyed.includes(first));
    await pool.close();
  });

  test('a pooled container that dies is replaced', async () => {
    const { pool, runtime, conns } = setup({ busybox: 1 });
    pool.start();
    await until(() => readyOf(pool) === 1);
    const first = runtime.created[0]!;
    conns.get(first)!.die();
    await until(() => runtime.destroyed.includes(first) && readyOf(pool) === 1);
    assert.equal(pool.stats()[0]!.lost, 1);
    const c = await pool.claim('busybox', BASE);
    assert.ok(c && c.id !== first);
    await pool.close();
  });

  test('a rebuilt template makes pooled containers stale', async () => {
    const { pool, runtime, template } = setup({ busybox: 1 });
    pool.start();
    await until(() => readyOf(pool) === 1);
    const old = runtime.created[0]!;
    template.builtAt = 2;
    const c = await pool.claim('busybox', BASE);
    assert.equal(c, null, 'the old build is not handed out');
    assert.ok(runtime.destroyed.includes(old));
    await until(() => readyOf(pool) === 1);
    assert.notEqual((await pool.claim('busybox', BASE))?.id, old);
    await pool.close();
  });

  test('a template that is not built is not built by the default pool', async () => {
    const { pool, runtime } = setup({ busybox: 2 }, { status: 'missing' });
    pool.start();
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(runtime.created.length, 0);
    await pool.close();
  });

  test('close waits for a start in progress and destroys everything', async () => {
    const { pool, runtime } = setup({ busybox: 2 });
    let open!: () => void;
    runtime.gate = new Promise((r) => (open = r));
    pool.start();
    await until(() => runtime.concurrent === 1);
    const closing = pool.close();
    open();
    await closing;
    assert.deepEqual([...runtime.destroyed].sort(), [...runtime.created].sort());
    assert.equal(runtime.created.length, 1, 'no new start after close');
  });
});
