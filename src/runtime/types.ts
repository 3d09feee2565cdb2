/**
 * The runtime boundary. The sandbox service asks a RuntimeDriver to make, find
 * and destroy containers; it never runs crun itself and the driver never knows
 * about HTTP or SQLite. Commands and files do not go through the driver: they go
 * to the in-sandbox agent (src/agent), whose socket the driver sets up.
 */
import type { ResourceLimits } from '../config/index.js';
import type { AgentEndpoint } from '../agent/types.js';

export interface ContainerSpec {
  /** Sandbox id, also the OCI container id and the hostname inside. */
  id: string;
  /** Read-only lower layer: the template's rootfs, already owned by the mapped id range. */
  templateRootfs: string;
  resources: ResourceLimits;
}

export type ContainerStatus = 'running' | 'paused' | 'stopped' | 'missing';

export interface ContainerInfo {
  id: string;
  status: ContainerStatus;
  /** Host pid of the container's init (the agent), when running. */
  pid?: number;
}

export interface RuntimeDriver {
  /** Human name for logs and doctor, e.g. "crun 1.8.1". */
  readonly name: string;
  /**
   * Make the sandbox's disk (resources.diskMb) and writable layer, mount the overlay, write the bundle and start the
   * container with the agent as its init, listening on `agentEndpoint(id)`.
   * Resolves once the container runs. On failure it cleans up what it made.
   */
  create(spec: ContainerSpec, signal?: AbortSignal): Promise<ContainerInfo>;
  /** Kill every process, delete the container, unmount the overlay and the disk, remove the writable layer and cgroups. Idempotent. */
  destroy(id: string): Promise<void>;
  /** What the runtime knows of one container. */
  inspect(id: string): Promise<ContainerInfo>;
  /** Ids of every container this daemon's runtime state holds (running or not). */
  list(): Promise<string[]>;
  /** Ids that have leftovers on disk (sandbox dirs, mounts) — used by restart cleanup. */
  listLeftovers(): Promise<string[]>;
  /**
   * Change the limits of a running container that cgroups can change in place
   * (memory, cpus, pids); only the fields given. Used when a pooled sandbox is
   * claimed with other limits than it was started with.
   */
  update(id: string, resources: Partial<Pick<ResourceLimits, 'cpus' | 'memoryMb' | 'pids'>>): Promise<void>;
  /** OOM kills so far inside the sandbox's memory cgroup (0 when the runtime cannot tell). */
  oomKills(id: string): Promise<number>;
  /** Where the sandbox's agent listens (a host-root-owned unix socket for OCI runtimes; never inside the sandbox). */
  agentEndpoint(id: string): AgentEndpoint;
}
