/**
 * Daemon settings: one place for every default and its environment fallback.
 * The CLI (`capsule serve --port ...`) and tests build a DaemonConfig from here.
 */
import os from 'node:os';
import path from 'node:path';
import { InvalidArgumentError } from '../errors/index.js';

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
  /**
   * Warm pool size per template: that many sandboxes are kept started and
   * unclaimed, so a create from them skips the container start. 0 or absent
   * = no pool for that template. See src/sandboxes/pool.ts.
   */
  pools: Record<string, number>;
  /**
   * Whether a pool builds its template when it is missing: true when pools
   * were set by flag or env (the operator asked for them); false for the
   * default pool, which waits until a first create has built debian.
   */
  buildPoolTemplates: boolean;
}

/**
 * The default pool: two sandboxes of the template a create gets when it names
 * none (`debian`). Two covers an agent's usual one-at-a-time creates while
 * costing ~1 MiB of host memory. It does not build debian itself (~75 s of
 * debootstrap nobody asked for): it fills once a first create has built it.
 */
export const DEFAULT_POOLS: Readonly<Record<string, number>> = { debian: 2 };
export const MAX_POOL_SIZE = 256;

/**
 * Parse `name=size` pairs (`busybox=4,debian=2`; `--pool` takes one pair per
 * flag). Later pairs win; size 0 turns a template's pool off. Throws a plain
 * Error with the offending pair so the CLI can report it as a usage error.
 */
export function parsePools(pairs: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const raw of pairs.flatMap((p) => p.split(','))) {
    const pair = raw.trim();
    if (pair === '') continue;
    const m = /^([a-z0-9][a-z0-9._-]{0,63})=(\d{1,6})$/.exec(pair);
    const size = m ? Number(m[2]) : NaN;
    if (!m || size > MAX_POOL_SIZE) {
      throw new Error(`pool "${pair}" must look like <template>=<size> with size 0..${MAX_POOL_SIZE}, e.g. busybox=4`);
    }
    out[m[1]!] = size;
  }
  return out;
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

function poolsFromEnv(value: string | undefined): Record<string, number> {
  if (value === undefined) return { ...DEFAULT_POOLS };
  try {
    return parsePools([value]);
  } catch (e) {
    throw new InvalidArgumentError(`CAPSULE_POOL: ${(e as Error).message}`);
  }
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
    // Unset: the default pool; set (even empty): exactly the pools it lists.
    pools: poolsFromEnv(process.env.CAPSULE_POOL),
    buildPoolTemplates: process.env.CAPSULE_POOL !== undefined,
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
    /** Compiled seccomp filters (`<sha256>.bpf`), so crun need not compile the profile on every create. */
    seccompCache: path.join(dataDir, 'cache', 'seccomp'),
    /** The first admin key, written once (mode 0600) so the local CLI works without setup. */
    adminKey: path.join(dataDir, 'admin.key'),
  };
}
export type DataPaths = ReturnType<typeof dataPaths>;
