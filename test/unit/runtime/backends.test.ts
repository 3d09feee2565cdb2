/** The backend set: routing each sandbox to the driver that holds it, and what it says about missing ones. Fake drivers: pure logic. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Backends, backendFor, backendOf, backendsInfo } from '../../../src/runtime/backends.js';
import type { Isolation } from '../../../src/runtime/isolation.js';
import type { ContainerInfo, ContainerSpec, RuntimeCapabilities, RuntimeDriver } from '../../../src/runtime/types.js';
import { UnsupportedError } from '../../../src/errors/index.js';

class FakeDriver implements RuntimeDriver {
  readonly calls: string[] = [];
  readonly running = new Set<string>();
  readonly leftovers = new Set<string>();
  constructor(
    readonly kind: string,
    isolation: Isolation,
  ) {
    this.capabilities = { isolation, pause: isolation === 'container', checkpoint: false, updateResources: true, exportChanges: true, network: ['none'], maxLayers: 8 };
  }
  readonly capabilities: RuntimeCapabilities;
  get name() {
    return `${this.kind} 1.0`;
  }
  async create(spec: ContainerSpec): Promise<ContainerInfo> {
    this.calls.push(`create ${spec.id} ${spec.isolation}`);
    if (spec.id.startsWith('fail')) throw new Error('boom');
    this.running.add(spec.id);
    return { id: spec.id, status: 'running' };
  }
  async destroy(id: string) {
    this.calls.push(`destroy ${id}`);
    this.running.delete(id);
    this.leftovers.delete(id);
  }
  async inspect(id: string): Promise<ContainerInfo> {
    this.calls.push(`inspect ${id}`);
    return { id, status: this.running.has(id) ? 'running' : 'missing' };
  }
  async list() {
    return [...this.running];
  }
  async listLeftovers() {
    return [...this.leftovers];
  }
  async update(id: string) {
    this.calls.push(`update ${id}`);
  }
  async pause(id: string) {
    this.calls.push(`pause ${id}`);
  }
  async resume(id: string) {
    this.calls.push(`resume ${id}`);
  }
  async exportChanges(id: string) {
    this.calls.push(`export ${id}`);
  }
  async oomKills() {
    return 0;
  }
  agentEndpoint(id: string) {
    return { kind: 'unix' as const, path: `/${this.kind}/${id}.sock` };
  }
}

const spec = (id: string, isolation?: Isolation): ContainerSpec => ({
  id,
  layers: [{ path: '/l' }],
  writable: { diskMb: 16 },
  resources: { cpus: 1, memoryMb: 64, pids: 16 },
  network: { mode: 'none' },
  ...(isolation ? { isolation } : {}),
});

function setup(recorded: Record<string, string> = {}) {
  const crun = new FakeDriver('crun', 'container');
  const runsc = new FakeDriver('runsc', 'gvisor');
  const b = new Backends({ drivers: [crun, runsc], unavailable: { microvm: 'not here' }, defaultIsolation: 'container', recorded: (id) => recorded[id] });
  return { crun, runsc, b };
}

describe('Backends', () => {
  test('create goes to the asked isolation (default when none), and later verbs follow the sandbox', async () => {
    const { crun, runsc, b } = setup();
    await b.create(spec('a'));
    await b.create(spec('g', 'gvisor'));
    assert.deepEqual(crun.calls, ['create a container']);
    assert.deepEqual(runsc.calls, ['create g gvisor']);
    assert.deepEqual(b.agentEndpoint('g'), { kind: 'unix', path: '/runsc/g.sock' });
    await b.pause('g');
    await b.update('a', { pids: 8 });
    await b.destroy('g');
    assert.deepEqual(runsc.calls.slice(1), ['pause g', 'destroy g']);
    assert.deepEqual(crun.calls.slice(1), ['update a']);
    assert.equal(backendOf(b, 'a'), crun);
  });

  test('a failed create forgets the sandbox', async () => {
    const { runsc, b } = setup();
    await assert.rejects(b.create(spec('fail1', 'gvisor')), /boom/);
    assert.equal(b.of('fail1').kind, 'crun', 'unknown again: the default');
    assert.deepEqual(runsc.calls, ['create fail1 gvisor']);
  });

  test('after a restart, a sandbox goes to the driver its record names', async () => {
    const { crun, runsc, b } = setup({ old: 'runsc' });
    runsc.running.add('old');
    assert.equal((await b.inspect('old')).status, 'running');
    assert.deepEqual(b.agentEndpoint('old'), { kind: 'unix', path: '/runsc/old.sock' });
    assert.deepEqual(crun.calls, [], 'the container driver was never asked');
  });

  test('an id nobody knows: inspect asks each driver and remembers; destroy asks every driver', async () => {
    const { crun, runsc, b } = setup();
    runsc.running.add('orphan');
    assert.equal((await b.inspect('orphan')).status, 'running');
    assert.deepEqual(crun.calls, ['inspect orphan']);
    assert.equal(b.of('orphan'), runsc);
    runsc.leftovers.add('ghost');
    assert.deepEqual(await b.listLeftovers(), ['ghost']);
    await b.destroy('ghost');
    assert.ok(crun.calls.includes('destroy ghost') && runsc.calls.includes('destroy ghost'));
    assert.equal((await b.inspect('nobody')).status, 'missing');
  });

  test('list is the union, and teaches the set who holds what', async () => {
    const { crun, runsc, b } = setup();
    crun.running.add('c1');
    runsc.running.add('g1');
    assert.deepEqual(await b.list(), ['c1', 'g1']);
    assert.equal(b.of('g1'), runsc);
  });

  test('a missing isolation is unsupported with its reason; the set reports every kind', () => {
    const { b, runsc } = setup();
    assert.throws(() => b.forIsolation('microvm'), (e: unknown) => e instanceof UnsupportedError && /isolation "microvm" is not available here: not here/.test(e.message));
    assert.equal(backendFor(b, 'gvisor'), runsc);
    assert.deepEqual(
      b.info().map((i) => [i.isolation, i.available, i.default, i.kind ?? i.reason]),
      [
        ['container', true, true, 'crun'],
        ['gvisor', true, false, 'runsc'],
        ['microvm', false, false, 'not here'],
      ],
    );
    assert.equal(b.kind, 'crun');
    assert.equal(b.capabilities.isolation, 'container');
  });

  test('a default isolation that is not available stops the daemon with the reason', () => {
    const crun = new FakeDriver('crun', 'container');
    assert.throws(
      () => new Backends({ drivers: [crun], unavailable: { gvisor: 'runsc is not installed' }, defaultIsolation: 'gvisor' }),
      /default isolation gvisor .* is not available here: runsc is not installed/,
    );
  });

  test('a plain driver serves its own isolation and refuses others', () => {
    const crun = new FakeDriver('crun', 'container');
    assert.equal(backendFor(crun, undefined), crun);
    assert.equal(backendFor(crun, 'container'), crun);
    assert.throws(() => backendFor(crun, 'gvisor'), UnsupportedError);
    assert.deepEqual(backendsInfo(crun).map((i) => i.available), [true, false, false]);
  });
});
