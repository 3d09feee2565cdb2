/**
 * The daemon's set of runtime backends, one per isolation kind, seen by the
 * services as one RuntimeDriver. Each sandbox belongs to the driver that made
 * it: verbs that name a sandbox go to that driver, so a service written for
 * one backend (kill, inspect, the agent endpoint, pause, stop, metrics, the
 * network relay and its ports) works unchanged for sandboxes of every kind,
 * and a verb a backend lacks answers its own `unsupported` error.
 *
 * What a sandbox asks for is chosen with `backendFor(runtime, isolation)`,
 * which also checks availability: the capabilities to check before an
 * optional verb are `backendOf(runtime, id).capabilities`, the sandbox's own.
 * The `kind`, `name` and `capabilities` of the set itself are those of the
 * default backend (what a create that names no isolation gets).
 *
 * Volumes belong to no sandbox: their disks sit in the data directory, and
 * `prepareVolume` and `removeVolume` go to the first backend (the default
 * first) that has the `volumes` capability (`volumesBackend`); whether a
 * sandbox may attach them is its own backend's capability.
 *
 * Which driver holds a sandbox is learnt at create, from the sandbox's record
 * after a restart (`recorded`: the `runtime` column holds the driver's kind),
 * and otherwise by asking each driver: ids nobody knows (orphans from a
 * crash) are destroyed by every driver, since each destroy is idempotent.
 */
import type { Duplex } from 'node:stream';
import { UnsupportedError } from '../errors/index.js';
import type { AgentEndpoint } from '../agent/types.js';
import { ISOLATIONS, type Isolation } from './isolation.js';
import type { CgroupLimits, ContainerInfo, ContainerSpec, NetworkSpec, RuntimeCapabilities, RuntimeDriver, SandboxStats } from './types.js';

/** One isolation kind on this daemon: its backend when there is one, else why not. */
export interface BackendInfo {
  isolation: Isolation;
  available: boolean;
  /** Sandboxes whose create names no isolation get this one. */
  default: boolean;
  /** The driver's kind (recorded with each sandbox) and version, when available. */
  kind?: string;
  name?: string;
  capabilities?: Omit<RuntimeCapabilities, 'network'> & { network: string[] };
  /** Why it is not available, and how to make it so. */
  reason?: string;
}

export interface BackendsOptions {
  /** Available drivers, at most one per isolation. */
  drivers: readonly RuntimeDriver[];
  /** Why each missing isolation is missing. */
  unavailable?: Partial<Record<Isolation, string>>;
  defaultIsolation: Isolation;
  /** The driver kind a sandbox was recorded with (its row's `runtime`), to route it after a restart. */
  recorded?: (id: string) => string | null | undefined;
}

/** Optional extras of a driver the daemon uses when present (the OCI driver has them). */
interface DriverExtras {
  templateInUse?(rootfs: string): boolean;
  tuneAgentSocket?(fd: number): Promise<void>;
  close?(): Promise<void>;
}

export class Backends implements RuntimeDriver {
  private readonly byIsolation = new Map<Isolation, RuntimeDriver>();
  private readonly held = new Map<string, RuntimeDriver>();
  private readonly defaultDriver: RuntimeDriver;

  constructor(private readonly opts: BackendsOptions) {
    for (const d of opts.drivers) {
      if (this.byIsolation.has(d.capabilities.isolation)) throw new Error(`two backends for isolation ${d.capabilities.isolation}`);
      this.byIsolation.set(d.capabilities.isolation, d);
    }
    const def = this.byIsolation.get(opts.defaultIsolation);
    if (!def) {
      throw new UnsupportedError(
        `the default isolation ${opts.defaultIsolation} (CAPSULE_ISOLATION, --isolation) is not available here: ${opts.unavailable?.[opts.defaultIsolation] ?? 'no backend for it'}`,
        { isolation: opts.defaultIsolation },
      );
    }
    this.defaultDriver = def;
  }

  get kind(): string {
    return this.defaultDriver.kind;
  }

  get name(): string {
    return this.defaultDriver.name;
  }

  get capabilities(): RuntimeCapabilities {
    return this.defaultDriver.capabilities;
  }

  get defaultIsolation(): Isolation {
    return this.defaultDriver.capabilities.isolation;
  }

  /** The backend for `isolation` (the default when undefined); `unsupported`, with the reason, when this host has none. */
  forIsolation(isolation: Isolation | undefined): RuntimeDriver {
    if (isolation === undefined) return this.defaultDriver;
    const d = this.byIsolation.get(isolation);
    if (d) return d;
    const why = this.opts.unavailable?.[isolation] ?? 'no backend for it on this daemon';
    throw new UnsupportedError(`isolation "${isolation}" is not available here: ${why}`, { isolation, reason: why });
  }

  /** The backend that holds sandbox `id` (the default when nobody knows it yet). */
  of(id: string): RuntimeDriver {
    return this.known(id) ?? this.defaultDriver;
  }

  /** The backend that keeps volume disks: the default when it can, else the first that can (else the default, which refuses). */
  forVolumes(): RuntimeDriver {
    return this.allDrivers().find((d) => d.capabilities.volumes) ?? this.defaultDriver;
  }

  /** Every isolation kind, available or not (GET /v1/info). */
  info(): BackendInfo[] {
    return ISOLATIONS.map((isolation) => {
      const d = this.byIsolation.get(isolation);
      const isDefault = d !== undefined && d === this.defaultDriver;
      if (!d) return { isolation, available: false, default: false, reason: this.opts.unavailable?.[isolation] ?? 'no backend for it on this daemon' };
      return { isolation, available: true, default: isDefault, kind: d.kind, name: d.name, capabilities: { ...d.capabilities, network: [...d.capabilities.network] } };
    });
  }

  private known(id: string): RuntimeDriver | undefined {
    const held = this.held.get(id);
    if (held) return held;
    const kind = this.opts.recorded?.(id);
    if (!kind) return undefined;
    for (const d of this.byIsolation.values()) if (d.kind === kind) return d;
    return undefined;
  }

  // --- RuntimeDriver, routed by sandbox -------------------------------------------

  async create(spec: ContainerSpec, signal?: AbortSignal): Promise<ContainerInfo> {
    const d = this.forIsolation(spec.isolation);
    this.held.set(spec.id, d);
    try {
      return await d.create({ ...spec, isolation: d.capabilities.isolation }, signal);
    } catch (e) {
      if (this.held.get(spec.id) === d) this.held.delete(spec.id);
      throw e;
    }
  }

  async destroy(id: string): Promise<void> {
    const d = this.known(id);
    if (d) {
      try {
        await d.destroy(id);
      } finally {
        if (this.held.get(id) === d) this.held.delete(id);
      }
      return;
    }
    // Nobody knows it: each driver removes whatever of it is its own (a no-op where there is none).
    const errors: unknown[] = [];
    for (const drv of this.allDrivers()) await drv.destroy(id).catch((e: unknown) => errors.push(e));
    if (errors.length > 0) throw errors[0];
  }

  async inspect(id: string): Promise<ContainerInfo> {
    const d = this.known(id);
    if (d) return d.inspect(id);
    for (const drv of this.allDrivers()) {
      const info = await drv.inspect(id);
      if (info.status !== 'missing') {
        this.held.set(id, drv);
        return info;
      }
    }
    return { id, status: 'missing' };
  }

  async list(): Promise<string[]> {
    const all = new Set<string>();
    for (const d of this.allDrivers()) {
      for (const id of await d.list()) {
        all.add(id);
        if (!this.held.has(id)) this.held.set(id, d);
      }
    }
    return [...all].sort();
  }

  async listLeftovers(): Promise<string[]> {
    const all = new Set<string>();
    for (const d of this.allDrivers()) for (const id of await d.listLeftovers()) all.add(id);
    return [...all].sort();
  }

  update(id: string, resources: Partial<CgroupLimits>): Promise<void> {
    return this.of(id).update(id, resources);
  }

  pause(id: string): Promise<void> {
    return this.of(id).pause(id);
  }

  resume(id: string): Promise<void> {
    return this.of(id).resume(id);
  }

  stop(id: string): Promise<void> {
    return this.of(id).stop(id);
  }

  start(id: string, signal?: AbortSignal): Promise<ContainerInfo> {
    return this.of(id).start(id, signal);
  }

  async checkpoint(id: string): Promise<{ ms: number; imageBytes: number }> {
    const d = this.of(id);
    if (!d.checkpoint || !d.capabilities.memorySnapshot) {
      throw new UnsupportedError(`the ${d.kind} backend cannot hibernate sandboxes: ${d.capabilities.reasons?.memorySnapshot ?? 'no memory snapshots'}`, { id, backend: d.kind });
    }
    return d.checkpoint(id);
  }

  async exportChangesWithMemory(id: string, dest: string, signal?: AbortSignal): Promise<string> {
    const d = this.of(id);
    if (!d.exportChangesWithMemory || !d.capabilities.memorySnapshot) {
      throw new UnsupportedError(`the ${d.kind} backend cannot fork sandboxes with their memory: ${d.capabilities.reasons?.memorySnapshot ?? 'no memory snapshots'}`, { id, backend: d.kind });
    }
    return d.exportChangesWithMemory(id, dest, signal);
  }

  async restoreFork(id: string, images: string): Promise<ContainerInfo> {
    const d = this.of(id);
    if (!d.restoreFork) throw new UnsupportedError(`the ${d.kind} backend cannot restore forks`, { id, backend: d.kind });
    return d.restoreFork(id, images);
  }

  async dropForkImages(images: string): Promise<void> {
    for (const d of this.allDrivers()) await d.dropForkImages?.(images);
  }

  async restore(id: string, signal?: AbortSignal): Promise<ContainerInfo> {
    const d = this.of(id);
    if (!d.restore) throw new UnsupportedError(`the ${d.kind} backend cannot restore sandboxes`, { id, backend: d.kind });
    return d.restore(id, signal);
  }

  exportChanges(id: string, dest: string, signal?: AbortSignal): Promise<void> {
    return this.of(id).exportChanges(id, dest, signal);
  }

  oomKills(id: string): Promise<number> {
    return this.of(id).oomKills(id);
  }

  async stats(id: string): Promise<SandboxStats> {
    const d = this.of(id);
    if (!d.stats) throw new UnsupportedError(`the ${d.kind} backend does not report sandbox metrics`, { id, backend: d.kind });
    return d.stats(id);
  }

  agentEndpoint(id: string): AgentEndpoint {
    return this.of(id).agentEndpoint(id);
  }

  async openAgentFile(id: string, fd: number, ino: bigint): Promise<number | undefined> {
    const d = this.of(id);
    if (!d.openAgentFile || !d.capabilities.fileHandoff) return undefined;
    return d.openAgentFile(id, fd, ino);
  }

  async attachNetwork(id: string, spec: NetworkSpec): Promise<void> {
    const d = this.of(id);
    if (spec.mode === 'none') return;
    if (!d.attachNetwork || !d.capabilities.network.includes(spec.mode)) {
      throw new UnsupportedError(`the ${d.kind} backend cannot give a sandbox network mode "${spec.mode}"`, { id, backend: d.kind });
    }
    return d.attachNetwork(id, spec);
  }

  async connectPort(id: string, port: number, signal?: AbortSignal): Promise<Duplex> {
    const d = this.of(id);
    if (!d.connectPort || !d.capabilities.network.includes('gateway')) {
      throw new UnsupportedError(`the ${d.kind} backend cannot expose sandbox ports`, { id, backend: d.kind });
    }
    return d.connectPort(id, port, signal);
  }

  // --- volumes: not a sandbox's -------------------------------------------------------

  prepareVolume(volumeId: string, sizeMb: number): Promise<void> {
    return this.forVolumes().prepareVolume(volumeId, sizeMb);
  }

  removeVolume(volumeId: string): Promise<void> {
    return this.forVolumes().removeVolume(volumeId);
  }

  // --- daemon extras ----------------------------------------------------------------

  /** Whether a sandbox of any backend sits on the layer tree `rootfs` (unknown means yes). */
  templateInUse(rootfs: string): boolean {
    return this.allDrivers().some((d) => (d as RuntimeDriver & DriverExtras).templateInUse?.(rootfs) ?? false);
  }

  async tuneAgentSocket(fd: number): Promise<void> {
    const d = this.allDrivers().find((x) => (x as RuntimeDriver & DriverExtras).tuneAgentSocket);
    await (d as (RuntimeDriver & DriverExtras) | undefined)?.tuneAgentSocket?.(fd);
  }

  async close(): Promise<void> {
    for (const d of this.allDrivers()) await (d as RuntimeDriver & DriverExtras).close?.();
  }

  /** The default driver first: it holds most sandboxes. */
  private allDrivers(): RuntimeDriver[] {
    return [this.defaultDriver, ...[...this.byIsolation.values()].filter((d) => d !== this.defaultDriver)];
  }
}

/**
 * The backend a create asking for `isolation` gets. Works on a plain driver too
 * (unit tests, one-backend setups): it serves its own isolation and refuses others.
 */
export function backendFor(runtime: RuntimeDriver, isolation: Isolation | undefined): RuntimeDriver {
  if (runtime instanceof Backends) return runtime.forIsolation(isolation);
  if (isolation === undefined || isolation === runtime.capabilities.isolation) return runtime;
  throw new UnsupportedError(`isolation "${isolation}" is not available here: this daemon runs only ${runtime.capabilities.isolation} sandboxes`, {
    isolation,
  });
}

/** The backend holding sandbox `id`: ask its capabilities before an optional verb. */
export function backendOf(runtime: RuntimeDriver, id: string): RuntimeDriver {
  return runtime instanceof Backends ? runtime.of(id) : runtime;
}

/** The backend that keeps volume disks (check its `volumes` capability before making one). */
export function volumesBackend(runtime: RuntimeDriver): RuntimeDriver {
  return runtime instanceof Backends ? runtime.forVolumes() : runtime;
}

/** What GET /v1/info lists: every isolation kind with its availability. */
export function backendsInfo(runtime: RuntimeDriver): BackendInfo[] {
  if (runtime instanceof Backends) return runtime.info();
  const c = runtime.capabilities;
  return ISOLATIONS.map((isolation) =>
    isolation === c.isolation
      ? { isolation, available: true, default: true, kind: runtime.kind, name: runtime.name, capabilities: { ...c, network: [...c.network] } }
      : { isolation, available: false, default: false, reason: 'this daemon runs one backend only' },
  );
}
