/**
 * The runtime boundary. The sandbox service asks a RuntimeDriver to make, find,
 * change and destroy sandboxes; it never runs crun itself, and a driver never
 * knows about HTTP, SQLite, owners or templates. A second backend (gVisor, a
 * microVM, a remote node) implements this interface and passes the same
 * contract suite (test/integration/runtime/contract.ts) without any change to
 * the services: they describe what they want with a ContainerSpec, reach the
 * agent at the AgentEndpoint the driver names, and ask the driver's declared
 * capabilities before asking for anything optional.
 *
 * Commands and files do not go through the driver: they go to the in-sandbox
 * agent (src/agent), which the driver starts as the sandbox's init.
 */
import type { ResourceLimits } from '../config/index.js';
import type { AgentEndpoint } from '../agent/types.js';
import type { Isolation } from './isolation.js';

/** One read-only layer of a sandbox's root filesystem. */
export interface LayerRef {
  /** Host directory holding the layer's tree, already owned by the sandbox's mapped id range. */
  path: string;
  /** Content identity when known (a template build or, later, a content digest); for logs and reference counts. */
  digest?: string;
}

/** The sandbox's own writable layer: everything it writes lands here, bounded by the quota. */
export interface WritableLayerSpec {
  /** Quota in MiB; writes past it fail with ENOSPC inside the sandbox. */
  diskMb: number;
}

/**
 * What network the sandbox gets. `none`: its own network namespace with only
 * loopback (today's only mode). The networking work adds egress modes here;
 * a driver lists the modes it can make in its capabilities.
 */
export type NetworkSpec = { mode: 'none' };
export type NetworkMode = NetworkSpec['mode'];

/** Limits a running sandbox's cgroup enforces (and, where the driver can, changes in place). */
export type CgroupLimits = Pick<ResourceLimits, 'cpus' | 'memoryMb' | 'pids'>;

export interface ContainerSpec {
  /** Sandbox id, also the container id and the hostname inside. */
  id: string;
  /**
   * Read-only layers of the root filesystem, lowest (the base) first: each
   * later layer's files hide the same paths of the layers before it, and the
   * writable layer sits on top of them all. Template layers today; snapshot
   * layers later. At most `capabilities.maxLayers`.
   */
  layers: readonly LayerRef[];
  writable: WritableLayerSpec;
  resources: CgroupLimits;
  network: NetworkSpec;
  /**
   * Let setuid programs (sudo) take effect: the init runs without
   * no_new_privs. Only for templates that ask for it (base): becoming root in
   * the sandbox gives nothing its API caller lacks (commands may run as root),
   * and that root is still an unprivileged host uid with the sandbox's
   * capability set and seccomp filter.
   */
  allowSetuid?: boolean;
  /**
   * The kind of backend that must hold it. A driver refuses a spec for
   * another kind; the daemon's backend set (backends.ts) routes by it, and
   * absent means the daemon's default.
   */
  isolation?: Isolation;
}

export type ContainerStatus = 'running' | 'paused' | 'stopped' | 'missing';

export interface ContainerInfo {
  id: string;
  status: ContainerStatus;
  /** Host pid of the container's init (the agent), when running and the backend has one. */
  pid?: number;
}

/** What a backend can do beyond create/inspect/destroy. Services consult it; they never ask "is this crun?". */
export interface RuntimeCapabilities {
  /** How strongly the sandbox is separated from the host kernel. */
  isolation: Isolation;
  /** Freeze and thaw every process of a sandbox (pause/resume). */
  pause: boolean;
  /** Dump a sandbox's memory and processes and restore them (memory snapshots). */
  checkpoint: boolean;
  /** Change cpus, memory and pids of a running sandbox (`update`). */
  updateResources: boolean;
  /** Copy a sandbox's writable-layer changes out as an overlay diff (`exportChanges`): template build steps, snapshots. */
  exportChanges: boolean;
  /** Network modes `create` accepts. */
  network: readonly NetworkMode[];
  /** Most read-only layers one sandbox may stack. */
  maxLayers: number;
}

/** Optional verbs are named after their capability, so a service can check one before calling the other. */
export type CapabilityName = {
  [K in keyof RuntimeCapabilities]: RuntimeCapabilities[K] extends boolean ? K : never;
}[keyof RuntimeCapabilities];

export interface RuntimeDriver {
  /** Short backend name recorded with each sandbox, e.g. "crun". */
  readonly kind: string;
  /** Human name for logs and doctor, e.g. "crun 1.8.1". */
  readonly name: string;
  readonly capabilities: RuntimeCapabilities;
  /**
   * Make the sandbox's writable layer (a disk of `writable.diskMb`), stack it on
   * `layers`, and start the sandbox with the agent as its init, reachable at
   * `agentEndpoint(id)`. Resolves once it runs. On failure, or when `signal`
   * aborts, it removes what it made before it rejects.
   */
  create(spec: ContainerSpec, signal?: AbortSignal): Promise<ContainerInfo>;
  /** Kill every process and remove the container, mounts, writable layer and cgroups. Idempotent. */
  destroy(id: string): Promise<void>;
  /** What the runtime knows of one sandbox. */
  inspect(id: string): Promise<ContainerInfo>;
  /** Ids of every sandbox this driver's state holds (running or not). */
  list(): Promise<string[]>;
  /** Ids that have leftovers (dirs, mounts, sockets): restart cleanup removes those nobody owns. */
  listLeftovers(): Promise<string[]>;
  /** Change cgroup limits in place; only the fields given. Needs `capabilities.updateResources`. */
  update(id: string, resources: Partial<CgroupLimits>): Promise<void>;
  /** Freeze every process; resolves once they are all frozen. Needs `capabilities.pause`. */
  pause(id: string): Promise<void>;
  /** Thaw a paused sandbox. Needs `capabilities.pause`. */
  resume(id: string): Promise<void>;
  /**
   * Copy what the sandbox changed (its writable layer, as an overlay diff with whiteouts and opaque
   * markers) into the empty directory `dest`, with its processes frozen meanwhile so no file is torn.
   * Needs `capabilities.exportChanges`.
   */
  exportChanges(id: string, dest: string, signal?: AbortSignal): Promise<void>;
  /** OOM kills so far inside the sandbox's memory cgroup (0 when the backend cannot tell). */
  oomKills(id: string): Promise<number>;
  /** Where the sandbox's agent listens (for an OCI runtime: a host-root-owned unix socket, never inside the sandbox). */
  agentEndpoint(id: string): AgentEndpoint;
}
