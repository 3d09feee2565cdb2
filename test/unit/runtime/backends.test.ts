/** The backend set: routing each sandbox to the driver that holds it, and what it says about missing ones. Fake drivers: pure logic. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Backends, backendFor, backendOf, backendsInfo, volumesBackend } from '../../../src/runtime/backends.js';
import type { Isolation } from '../../../src/runtime/isolation.js';
import type { ContainerInfo, ContainerSpec, NetworkSpec, RuntimeCapabilities, RuntimeDriver, SandboxStats } from '../../../src/runtime/types.js';
import { PassThrough, type Duplex } from 'node:stream';
import { UnsupportedError } from '../../../src/errors/index.js';

class FakeDriver implements RuntimeDriver {
  readonly calls: string[] = [];
  readonly running = new Set<string>();
  readonly leftovers = new Set<string>();
  constructor(
    readonly kind: string,
    isolation: Isolation,
  ) {
    const container = isolation === 'container';
    this.capabilities = {
      isolation,
      pause: container,
      stop: container,
      volumes: container,
      snapshot: container,
      memorySnapshot: false,
      updateResources: true,
      exportChanges: true,
      fileHandoff: false,
      network: container ? ['none', 'gateway'] : ['none'],
      maxLayers: 8,
    };
    // Like the gVisor driver: no network verbs at all.
    if (container) {
      this.attachNetwork = async (id: string, spec: NetworkSpec) => void this.calls.push(`attach ${id} ${spec.mode}`);
      this.connectPort = async (id: string, port: number) => {
        this.calls.push(`port ${id} ${port}`);
        return new PassThrough();
      };
    }
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
  async stop(id: string) {
    this.calls.push(`stop ${id}`);
  }
  async start(id: string): Promise<ContainerInfo> {
    this.calls.push(`start ${id}`);
    return { id, status: 'running' };
  }
  async prepareVolume(volumeId: string) {
    this.calls.push(`prepare ${volumeId}`);
  }
  async removeVolume(volumeId: string) {
    this.calls.push(`remove ${volumeId}`);
  }
  async stats(id: string): Promise<SandboxStats> {
    this.calls.push(`stats ${id}`);
    return { cpuUsageNs: 0, cpuLimitCores: 1, memoryBytes: 0, memoryPeakBytes: 0, memoryLimitBytes: 0, pids: 1, pidsLimit: 0, diskUsedBytes: 0, diskTotalBytes: 0 };
  }
  attachNetwork?: (id: string, spec: NetworkSpec) => Promise<void>;
  connectPort?: (id: string, port: number) => Promise<Duplex>;
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

  test('stop, start and stats follow the sandbox; its own capabilities are what backendOf answers', async () => {
    const { crun, runsc, b } = setup();
    await b.create(spec('a'));
    await b.create(spec('g', 'gvisor'));
    await b.stop('a');
    await b.start('a');
    await b.stats('g');
    await b.stats('a');
    assert.deepEqual(crun.calls.slice(1), ['stop a', 'start a', 'stats a']);
    assert.deepEqual(runsc.calls.slice(1), ['stats g']);
    assert.equal(backendOf(b, 'g').capabilities.stop, false);
    assert.equal(backendOf(b, 'a').capabilities.stop, true);
  });

  test('attachNetwork and connectPort go to the sandbox driver; one without them answers unsupported', async () => {
    const { crun, runsc, b } = setup();
    await b.create(spec('a'));
    await b.create(spec('g', 'gvisor'));
    const gw: NetworkSpec = { mode: 'gateway', gateway: { socket: '/gw.sock', resolver: '10.0.0.53' } };
    await b.attachNetwork('a', gw);
    (await b.connectPort('a', 8080)).destroy();
    assert.deepEqual(crun.calls.slice(1), ['attach a gateway', 'port a 8080']);
    await assert.rejects(b.attachNetwork('g', gw), (e: unknown) => e instanceof UnsupportedError && /runsc backend cannot give a sandbox network mode "gateway"/.test(e.message));
    await assert.rejects(b.connectPort('g', 8080), (e: unknown) => e instanceof UnsupportedError && /runsc backend cannot expose sandbox ports/.test(e.message));
    await b.attachNetwork('g', { mode: 'none' });
    assert.deepEqual(runsc.calls.slice(1), []);
  });

  test('volumes go to a backend that has them, even when the default lacks them', async () => {
    const crun = new FakeDriver('crun', 'container');
    const runsc = new FakeDriver('runsc', 'gvisor');
    const b = new Backends({ drivers: [crun, runsc], defaultIsolation: 'gvisor' });
    assert.equal(b.capabilities.volumes, false, 'the default (gVisor) has none');
    assert.equal(volumesBackend(b), crun);
    await b.prepareVolume('vol-1', 16);
    await b.removeVolume('vol-1');
    assert.deepEqual(crun.calls, ['prepare vol-1', 'remove vol-1']);
    assert.deepEqual(runsc.calls, []);
    assert.equal(volumesBackend(crun), crun);
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
