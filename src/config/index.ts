/**
 * Daemon settings: one place for every default and its environment fallback.
 * The CLI (`capsule serve --port ...`) and tests build a DaemonConfig from here.
 */
import os from 'node:os';
import path from 'node:path';

export interface ResourceLimits {
  /** CPU share in cores (cgroup cpu quota = cpus * period). */
  cpus: number;
  /** Memory limit in MiB (memory.limit_in_bytes); swap is not added on top. */
  memoryMb: number;
  /** Maximum number of processes and threads (pids.max). */
  pids: number;
  /**
   * Disk quota in MiB: the size of the sandbox's own ext4 (a sparse image on
   * the data dir's filesystem), which holds everything it writes. Writes past
   * it fail with ENOSPC inside the sandbox. Host space is used only as the
   * sandbox writes, so the sum of quotas may exceed the host's free space.
   */
  diskMb: number;
}

export interface DaemonConfig {
  host: string;
  port: number;
  /** Everything the daemon owns lives below this: SQLite, templates, sandboxes, sockets, crun state. */
  dataDir: string;
  /** OCI runtime: `crun`, `runc`, `runsc` or an absolute path. */
  runtime: string;
  defaultTimeoutMs: number;
  maxTimeoutMs: number;
  defaultResources: ResourceLimits;
  /** Largest `resources.diskMb` a create may ask for (the API schema allows up to 1 TiB). */
  maxDiskMb: number;
  /** Host uid/gid that container root maps to; the next 65536 ids are the sandbox's. */
  idMapBase: number;
  idMapSize: number;
  /** How often expired sandboxes are looked for. */
  reapIntervalMs: number;
  logLevel: string;
  /**
   * Require API keys (default). Off only with an explicit `--no-auth`: then
   * every caller is an admin, which is only sane on a loopback-only daemon.
   */
  auth: boolean;
}

export function defaultDataDir(): string {
  if (process.getuid?.() === 0) return '/var/lib/capsule';
  return path.join(os.homedir(), '.local', 'share', 'capsule');
}

function envInt(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  return Number.isFinite(n) ? n : fallback;
}

export function loadConfig(overrides: Partial<DaemonConfig> = {}): DaemonConfig {
  return {
    host: process.env.CAPSULE_HOST ?? '127.0.0.1',
    port: envInt('CAPSULE_PORT', 7878),
    dataDir: process.env.CAPSULE_DATA_DIR ?? defaultDataDir(),
    runtime: process.env.CAPSULE_RUNTIME ?? 'crun',
    defaultTimeoutMs: envInt('CAPSULE_DEFAULT_TIMEOUT_MS', 5 * 60_000),
    maxTimeoutMs: envInt('CAPSULE_MAX_TIMEOUT_MS', 24 * 60 * 60_000),
    defaultResources: { cpus: 1, memoryMb: 512, pids: 256, diskMb: envInt('CAPSULE_DEFAULT_DISK_MB', 2048) },
    maxDiskMb: envInt('CAPSULE_MAX_DISK_MB', 64 * 1024),
    idMapBase: 100000,
    idMapSize: 65536,
    reapIntervalMs: 1000,
    logLevel: process.env.CAPSULE_LOG_LEVEL ?? 'info',
    auth: process.env.CAPSULE_NO_AUTH !== '1',
    ...overrides,
  };
}

/** Fixed layout below the data directory, so every room computes paths the same way. */
export function dataPaths(dataDir: string) {
  return {
    db: path.join(dataDir, 'capsule.db'),
    templates: path.join(dataDir, 'templates'),
    templateRootfs: (name: string) => path.join(dataDir, 'templates', name, 'rootfs'),
    sandboxes: path.join(dataDir, 'sandboxes'),
    sandboxDir: (id: string) => path.join(dataDir, 'sandboxes', id),
    /** One empty, freshly made ext4 image per common disk size; sandboxes get sparse copies (native/capsule-mount). */
    diskImages: path.join(dataDir, 'disk-images'),
    /** Listening sockets of the in-sandbox agents: host-root-owned, never mounted into a sandbox. */
    run: path.join(dataDir, 'run'),
    agentSocket: (id: string) => path.join(dataDir, 'run', `${id}.sock`),
    /** The runtime's own state (`crun --root`), separate from any other user of crun on the host. */
    runtimeState: path.join(dataDir, 'runtime'),
    /** The agent binary copied here at start and bind-mounted read-only into each sandbox. */
    bin: path.join(dataDir, 'bin'),
    /** The first admin key, written once (mode 0600) so the local CLI works without setup. */
    adminKey: path.join(dataDir, 'admin.key'),
  };
}
export type DataPaths = ReturnType<typeof dataPaths>;
