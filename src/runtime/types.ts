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
import type { Duplex } from 'node:stream';
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
 * What network the sandbox gets; a driver lists the modes it can make in its capabilities.
 *
 * - `none`: its own network namespace with only loopback. Nothing leaves it, and nothing reaches it.
 * - `gateway`: still no interface but loopback, and no route out of the sandbox's own namespace,
 *   yet every TCP connection it opens to anything but its own loopback, and every DNS datagram to
 *   `gateway.resolver`, is handed to the daemon's gateway at `gateway.socket` (a host unix socket),
 *   which decides and dials out itself. The sandbox cannot change this (no CAP_NET_ADMIN). The same
 *   mode gives the daemon `connectPort`, a stream to a port on the sandbox's loopback.
 *   Wire format of the hand-over: native/capsule-netrelay.c (the OCI driver's relay) and
 *   src/network/gateway.ts (the daemon's side); another backend speaks the same format.
 */
export type NetworkSpec = { mode: 'none' } | { mode: 'gateway'; gateway: GatewaySpec };
export type NetworkMode = NetworkSpec['mode'];

/**
 * A named volume attached to a sandbox: its own quota'd disk, made and kept by
 * the driver (`prepareVolume`), seen inside the sandbox at `target`.
 */
export interface VolumeAttachment {
  /** The volume's id (`vol-…`): the driver keeps its disk under this name. */
  volumeId: string;
  /** Its disk quota in MiB (used when its disk is first made). */
  sizeMb: number;
  /** Absolute, normalized path inside the sandbox. */
  target: string;
  readOnly: boolean;
}

export interface GatewaySpec {
  /** Host unix socket of the daemon's gateway: one connection per flow, plus one for DNS. */
  socket: string;
  /** IPv4 address that answers DNS on port 53 inside the sandbox (not routed anywhere). */
  resolver: string;
}

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
  /** Named volumes to attach (needs `capabilities.volumes`); the same ones come back at every start. */
  volumes?: readonly VolumeAttachment[];
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

/**
 * `stopped`: nothing runs, and what the runtime kept (for an OCI runtime: the
 * sandbox's disk) is there; `start` can boot it again when the backend has the
 * `stop` capability. `hibernated`: stopped, with a complete memory checkpoint
 * that `restore` brings back (`memorySnapshot`). `missing`: the runtime knows nothing of it.
 */
export type ContainerStatus = 'running' | 'paused' | 'stopped' | 'hibernated' | 'missing';

export interface ContainerInfo {
  id: string;
  status: ContainerStatus;
  /** Host pid of the container's init (the agent), when running and the backend has one. */
  pid?: number;
}

/** What a running sandbox uses now: its cgroups' counters and its disk. */
export interface SandboxStats {
  /** CPU time used since start, in ns (all cores together). */
  cpuUsageNs: number;
  /** The CPU limit in cores (quota / period); 0 when unlimited. */
  cpuLimitCores: number;
  memoryBytes: number;
  memoryPeakBytes: number;
  memoryLimitBytes: number;
  pids: number;
  /** 0 when unlimited. */
  pidsLimit: number;
  /** Used and total bytes of the sandbox's writable disk. */
  diskUsedBytes: number;
  diskTotalBytes: number;
}

/** What a backend can do beyond create/inspect/destroy. Services consult it; they never ask "is this crun?". */
export interface RuntimeCapabilities {
  /** How strongly the sandbox is separated from the host kernel. */
  isolation: Isolation;
  /** Freeze and thaw every process of a sandbox (pause/resume). */
  pause: boolean;
  /**
   * End every process and free the sandbox's memory while keeping its writable
   * layer, and boot it again from that layer later (stop/start), also after
   * the daemon or the host restarted.
   */
  stop: boolean;
  /** Named volumes: persistent quota'd disks attached read-write or read-only to any number of sandboxes. */
  volumes: boolean;
  /**
   * Filesystem snapshots: a consistent copy of the writable layer (`exportChanges` with every process
   * frozen) that new sandboxes stack as a read-only layer of their own.
   */
  snapshot: boolean;
  /**
   * Memory snapshots: dump a sandbox's processes and memory to disk and restore them, into the same
   * sandbox (hibernate) or into new ones (fork with memory).
   */
  memorySnapshot: boolean;
  /** Change cpus, memory and pids of a running sandbox (`update`). */
  updateResources: boolean;
  /** Copy a sandbox's writable-layer changes out as an overlay diff (`exportChanges`): template build steps, snapshots. */
  exportChanges: boolean;
  /**
   * The daemon can write an upload straight into the temp file the agent made for it (`openAgentFile`),
   * rather than relay every byte to the agent: the agent shares the host kernel's files (crun, runc).
   */
  fileHandoff: boolean;
  /** Network modes `create` accepts. */
  network: readonly NetworkMode[];
  /**
   * Whether a running sandbox made with network `none` can be given `gateway` later (`attachNetwork`: a
   * pooled sandbox, a policy change, a port reached). Absent means it can. A microVM cannot (no NIC
   * hotplug): it must be created with `gateway` to ever have a network.
   */
  networkAfterCreate?: boolean;
  /** Most read-only layers one sandbox may stack. */
  maxLayers: number;
  /** Why a capability is false, where this host could have it (what to install or run). */
  reasons?: Partial<Record<CapabilityName, string>>;
}

/** Optional verbs are named after their capability, so a service can check one before calling the other. */
export type CapabilityName = {
  [K in Exclude<keyof RuntimeCapabilities, 'reasons'>]: RuntimeCapabilities[K] extends boolean ? K : never;
}[Exclude<keyof RuntimeCapabilities, 'reasons'>];

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
   * End every process (a paused sandbox too) and release its memory, cgroups,
   * mounts and agent endpoint, keeping its writable layer and what `start`
   * needs, durably (a host reboot keeps it). Idempotent. Needs `capabilities.stop`.
   */
  stop(id: string): Promise<void>;
  /**
   * Boot a stopped sandbox again from its kept writable layer and the layers
   * it was created with, with the same id, limits and agent endpoint; resolves
   * once it runs. Works after a host reboot (mounts and devices are re-made).
   * On failure it leaves the sandbox stopped. Needs `capabilities.stop`.
   */
  start(id: string, signal?: AbortSignal): Promise<ContainerInfo>;
  /**
   * Make a volume's disk (`sizeMb`, once) and have it ready to attach; idempotent, and what a
   * create or start does itself for the volumes it attaches (after a host reboot, too).
   * Needs `capabilities.volumes`.
   */
  prepareVolume(volumeId: string, sizeMb: number): Promise<void>;
  /** Delete a volume's disk and everything on it. The caller makes sure no sandbox attaches it. Idempotent. */
  removeVolume(volumeId: string): Promise<void>;
  /**
   * Copy what the sandbox changed (its writable layer, as an overlay diff with whiteouts and opaque
   * markers) into the empty directory `dest`, with its processes frozen meanwhile so no file is torn.
   * Needs `capabilities.exportChanges`.
   */
  exportChanges(id: string, dest: string, signal?: AbortSignal): Promise<void>;
  /**
   * Hibernate: dump every process and its memory to disk, end the container and release what `restore`
   * makes again, keeping the writable layer; `inspect` then says `hibernated`, also after a daemon
   * restart. The caller closes its agent connections first. Needs `capabilities.memorySnapshot`.
   */
  checkpoint?(id: string): Promise<{ ms: number; imageBytes: number }>;
  /**
   * Bring a hibernated sandbox back from its checkpoint (same id, agent endpoint, processes and memory);
   * resolves once its agent listens, with the images deleted. On failure it stays hibernated.
   * Needs `capabilities.memorySnapshot`.
   */
  restore?(id: string, signal?: AbortSignal): Promise<ContainerInfo>;
  /**
   * Fork with memory: exportChanges, plus a checkpoint of every process taken in the same frozen instant
   * (they run on). Returns a handle (the images' directory) for restoreFork and dropForkImages.
   * Needs `capabilities.memorySnapshot`.
   */
  exportChangesWithMemory?(id: string, dest: string, signal?: AbortSignal): Promise<string>;
  /** Replace the processes of the new, running sandbox `id` with those of a fork checkpoint (own id and hostname). */
  restoreFork?(id: string, images: string): Promise<ContainerInfo>;
  /** Remove a fork checkpoint's images. */
  dropForkImages?(images: string): Promise<void>;
  /** OOM kills so far inside the sandbox's memory cgroup (0 when the backend cannot tell). */
  oomKills(id: string): Promise<number>;
  /** What the sandbox uses now (per-sandbox metrics); absent when the backend cannot tell. */
  stats?(id: string): Promise<SandboxStats>;
  /** Where the sandbox's agent listens (for an OCI runtime: a host-root-owned unix socket, never inside the sandbox). */
  agentEndpoint(id: string): AgentEndpoint;
  /**
   * Open for writing the file the sandbox's agent holds as descriptor `fd`, when it is the empty regular file
   * `ino` on the sandbox's root filesystem (an upload's temp file the agent offered); otherwise resolve
   * undefined, and the upload goes to the agent as data. The descriptor is the caller's to close. Needs
   * `capabilities.fileHandoff`.
   */
  openAgentFile?(id: string, fd: number, ino: bigint): Promise<number | undefined>;
  /**
   * Give a running sandbox a network mode other than the one it was created with (today: `gateway`
   * for a sandbox made with `none`, e.g. a pooled one); when it has it already, make sure its
   * plumbing is alive (restarted if it died). Needs the mode in `capabilities.network`.
   */
  attachNetwork?(id: string, spec: NetworkSpec): Promise<void>;
  /**
   * A byte stream to TCP `port` on the sandbox's own loopback (127.0.0.1), for port exposure.
   * Rejects with a SandboxError when nothing listens there. Needs `gateway` in `capabilities.network`
   * and the sandbox attached to it.
   */
  connectPort?(id: string, port: number, signal?: AbortSignal): Promise<Duplex>;
}
