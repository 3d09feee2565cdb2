/**
 * Daemon settings: one place for every default and its environment fallback.
 * The CLI (`capsule serve --port ...`) and tests build a DaemonConfig from here.
 */
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { InvalidArgumentError } from '../errors/index.js';
import { ISOLATIONS, type Isolation } from '../runtime/isolation.js';
import { TestInternet } from '../network/environment.js';

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
  /** OCI runtime of the container backend: `crun`, `runc` or an absolute path (gVisor is an isolation, not a runtime). */
  runtime: string;
  /** Isolation of a sandbox whose create names none (src/runtime/backends.ts). */
  isolation: Isolation;
  defaultTimeoutMs: number;
  maxTimeoutMs: number;
  defaultResources: ResourceLimits;
  /** Largest `resources.diskMb` a create may ask for (the API schema allows up to 1 TiB). */
  maxDiskMb: number;
  /** Host uid/gid that container root maps to; the next 65536 ids are the sandbox's. */
  idMapBase: number;
  idMapSize: number;
  /** How often expired sandboxes are looked for (and idle ones, and paused or stopped ones past retention). */
  reapIntervalMs: number;
  /** How long a paused or stopped sandbox is kept when its create names no lifecycle.deleteAfterMs. */
  defaultDeleteAfterMs: number;
  /** How long an ended sandbox's row, log, egress ledger and process journal are kept; 0 = forever (src/sandboxes/history.ts). */
  historyRetentionMs: number;
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
  /** Serve Prometheus text at /metrics without an API key (default: admin keys only). */
  metricsOpen?: boolean;
  /**
   * TESTS ONLY: serve the microvm isolation under software emulation (TCG), where the emulator is the
   * only boundary. Without hardware virtualization the backend is otherwise unavailable (src/runtime/microvm).
   */
  microvmAllowTcg?: boolean;
  /** The microVMs' guest kernel (bzImage or vmlinux; modules in a `modules/` dir beside it); default Debian's cloud kernel in /var/cache/capsule/microvm/kernel. */
  microvmKernel?: string | null;
  /** How often each running sandbox's cgroups and disk are sampled (GET /v1/sandboxes/:id/metrics). */
  metricsIntervalMs?: number;
  /**
   * TESTS ONLY: a simulated internet for sandboxes' egress (names from a table, and only loopback
   * stand-ins ever dialled), so tests never send a packet outside 127.0.0.0/8. See src/network/environment.ts.
   */
  netTestInternet?: TestInternet | null;
}

/** Sampling interval of per-sandbox metrics when none is set, and how many samples a sandbox keeps. */
export const DEFAULT_METRICS_INTERVAL_MS = 5000;
export const METRICS_HISTORY = 720;

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
 * flag). A name may add an isolation (`busybox:gvisor=2`): that pool keeps
 * sandboxes of that isolation; without one, of the daemon's default isolation
 * (`isolation`). Later pairs win; size 0 turns a pool off. Throws a plain
 * Error with the offending pair so the CLI can report it as a usage error.
 * Keys are `<template>` or `<template>:<isolation>` (see poolKey).
 */
export function parsePools(pairs: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const raw of pairs.flatMap((p) => p.split(','))) {
    const pair = raw.trim();
    if (pair === '') continue;
    const m = /^([a-z0-9][a-z0-9._-]{0,63})(?::([a-z]+))?=(\d{1,6})$/.exec(pair);
    const size = m ? Number(m[3]) : NaN;
    if (!m || size > MAX_POOL_SIZE || (m[2] !== undefined && !(ISOLATIONS as readonly string[]).includes(m[2]))) {
      throw new Error(
        `pool "${pair}" must look like <template>[:<isolation>]=<size> with size 0..${MAX_POOL_SIZE} and isolation one of ${ISOLATIONS.join(', ')}, e.g. busybox=4 or busybox:gvisor=2`,
      );
    }
    out[m[2] ? `${m[1]!}:${m[2]}` : m[1]!] = size;
  }
  return out;
}

/** A pool setting's key split: its template, and its isolation when the key names one. */
export function splitPoolKey(key: string): { template: string; isolation: Isolation | undefined } {
  const i = key.indexOf(':');
  return i < 0 ? { template: key, isolation: undefined } : { template: key.slice(0, i), isolation: key.slice(i + 1) as Isolation };
}

export function defaultDataDir(): string {
  if (process.getuid?.() === 0) return '/var/lib/capsule';
  return path.join(os.homedir(), '.local', 'share', 'capsule');
}

/** OCI runtimes known by name (found on PATH); any other runtime is given as an absolute path. */
export const KNOWN_RUNTIMES = ['crun', 'runc', 'runsc', 'kata-runtime', 'youki'] as const;
/** pino's levels, plus `silent`. */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
/**
 * Upper bound for the timeout settings: a year. Far above any real use, and it keeps
 * expiry times valid dates (a huge value would make `new Date(now + ms)` invalid).
 */
const MAX_SETTING_TIMEOUT_MS = 365 * 24 * 60 * 60_000;
/** The create schema's own diskMb range (src/schemas/sandboxes.ts): a default outside it could never be asked for. */
const DISK_MB_RANGE = [16, 1024 * 1024] as const;

function wholeNumber(min: number, max: number, unit?: string) {
  const msg = `must be a whole number${unit ? ` of ${unit}` : ''} from ${min} to ${max}`;
  return z
    .string()
    .trim()
    .regex(/^\d+$/, msg)
    .transform(Number)
    .refine((n) => n >= min && n <= max, msg);
}

const Host = z
  .string()
  .trim()
  .refine(
    (h) => net.isIP(h) !== 0 || /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/.test(h),
    'must be an IP address or a host name, e.g. 127.0.0.1, ::1 or localhost',
  );

const DataDir = z
  .string()
  .min(1, 'must be a directory path, e.g. /var/lib/capsule')
  .refine((d) => !d.includes('\0'), 'must not contain NUL')
  // Paths end up in the runtime's bundle and mount table, which need them absolute.
  .transform((d) => path.resolve(d));

const Runtime = z
  .string()
  .trim()
  .refine(
    (r) => (KNOWN_RUNTIMES as readonly string[]).includes(r) || (path.isAbsolute(r) && !r.includes('\0')),
    `must be one of ${KNOWN_RUNTIMES.join(', ')} or an absolute path to an OCI runtime binary`,
  );

const Flag = z
  .string()
  .trim()
  .toLowerCase()
  .refine((v) => ['', '0', '1', 'true', 'false'].includes(v), 'must be 1 (or true) to turn it on, 0 (or false) or empty to leave it off')
  .transform((v) => v === '1' || v === 'true');

/**
 * Every setting `capsule serve` takes: how to give it (environment variable, flag),
 * its default and what it means, in one place. Values arrive as strings from the
 * environment or the command line and are checked here, so a typo fails the start
 * with the setting's name instead of becoming a default.
 */
export const SETTINGS = {
  host: { env: 'CAPSULE_HOST', flag: '--host', schema: Host.default('127.0.0.1'), describe: 'address to listen on' },
  port: { env: 'CAPSULE_PORT', flag: '--port', schema: wholeNumber(0, 65535).default(7878), describe: 'port to listen on; 0 picks a free one' },
  dataDir: {
    env: 'CAPSULE_DATA_DIR',
    flag: '--data-dir',
    schema: DataDir.optional(),
    describe: 'where sandboxes, templates and state live (default /var/lib/capsule as root, else ~/.local/share/capsule)',
  },
  runtime: { env: 'CAPSULE_RUNTIME', flag: '--runtime', schema: Runtime.default('crun'), describe: `OCI runtime: ${KNOWN_RUNTIMES.join(', ')} or an absolute path` },
  isolation: {
    env: 'CAPSULE_ISOLATION',
    flag: '--isolation',
    schema: z.string().trim().toLowerCase().pipe(z.enum(ISOLATIONS, `must be one of ${ISOLATIONS.join(', ')}`)).default('container'),
    describe: `isolation of a sandbox whose create names none: ${ISOLATIONS.join(', ')}`,
  },
  logLevel: {
    env: 'CAPSULE_LOG_LEVEL',
    flag: '--log-level',
    schema: z.string().trim().toLowerCase().pipe(z.enum(LOG_LEVELS, `must be one of ${LOG_LEVELS.join(', ')}`)).default('info'),
    describe: `log level on stderr: ${LOG_LEVELS.join(', ')}`,
  },
  defaultTimeoutMs: {
    env: 'CAPSULE_DEFAULT_TIMEOUT_MS',
    schema: wholeNumber(1000, MAX_SETTING_TIMEOUT_MS, 'milliseconds').default(5 * 60_000),
    describe: 'lifetime of a sandbox whose create names none',
  },
  maxTimeoutMs: {
    env: 'CAPSULE_MAX_TIMEOUT_MS',
    schema: wholeNumber(1000, MAX_SETTING_TIMEOUT_MS, 'milliseconds').default(24 * 60 * 60_000),
    describe: 'longest lifetime a create or a timeout change may ask for',
  },
  defaultDiskMb: {
    env: 'CAPSULE_DEFAULT_DISK_MB',
    schema: wholeNumber(...DISK_MB_RANGE, 'MiB').default(2048),
    describe: 'disk quota of a sandbox whose create names none',
  },
  maxDiskMb: {
    env: 'CAPSULE_MAX_DISK_MB',
    schema: wholeNumber(...DISK_MB_RANGE, 'MiB').default(64 * 1024),
    describe: 'largest disk quota a create may ask for (images are sparse: keep quota x sandboxes within free space)',
  },
  defaultDeleteAfterMs: {
    env: 'CAPSULE_DEFAULT_DELETE_AFTER_MS',
    schema: wholeNumber(1000, MAX_SETTING_TIMEOUT_MS, 'milliseconds').default(7 * 24 * 60 * 60_000),
    describe: 'retention: a paused or stopped sandbox whose create names no lifecycle.deleteAfterMs is deleted this long after it was paused or stopped (default 7 days)',
  },
  historyRetentionMs: {
    env: 'CAPSULE_HISTORY_RETENTION_MS',
    schema: wholeNumber(0, MAX_SETTING_TIMEOUT_MS, 'milliseconds').default(7 * 24 * 60 * 60_000),
    describe: "history: an ended sandbox's record, log and egress ledger are deleted this long after it ended (default 7 days; 0 keeps them forever)",
  },
  noAuth: { env: 'CAPSULE_NO_AUTH', schema: Flag.default(false), describe: 'accept requests without an API key (same as --no-auth)' },
  metricsOpen: {
    env: 'CAPSULE_METRICS_OPEN',
    schema: Flag.default(false),
    describe: 'serve Prometheus text at /metrics without an API key (same as --metrics-open; default: admin keys only)',
  },
  microvmAllowTcg: {
    env: 'CAPSULE_MICROVM_ALLOW_TCG',
    schema: Flag.default(false),
    describe: 'TESTS ONLY: let microvm sandboxes run under software emulation (TCG) on a host without hardware virtualization; the emulator is then the only boundary',
  },
  microvmKernel: {
    env: 'CAPSULE_MICROVM_KERNEL',
    schema: DataDir.optional(),
    describe: 'guest kernel of microvm sandboxes (bzImage or vmlinux, modules in a modules/ dir beside it; default /var/cache/capsule/microvm/kernel/vmlinuz, Debian\'s cloud kernel, from capsule doctor --fix)',
  },
  metricsIntervalMs: {
    env: 'CAPSULE_METRICS_INTERVAL_MS',
    schema: wholeNumber(100, 3_600_000, 'milliseconds').default(DEFAULT_METRICS_INTERVAL_MS),
    describe: `how often each sandbox's CPU, memory, disk and pids are sampled (a sandbox keeps its last ${METRICS_HISTORY} samples)`,
  },
  pools: {
    env: 'CAPSULE_POOL',
    schema: z
      .string()
      .transform((v, ctx) => {
        try {
          return parsePools([v]);
        } catch (e) {
          ctx.addIssue({ code: 'custom', message: (e as Error).message });
          return z.NEVER;
        }
      })
      .optional(),
    describe: 'warm pools, e.g. busybox=4,debian=2,busybox:gvisor=2 (template[:isolation]=size); empty turns pools off (default debian=2)',
    emptyIsValue: true,
  },
  netTestInternet: {
    env: 'CAPSULE_NET_TEST_INTERNET',
    schema: z
      .string()
      .transform((v, ctx) => {
        let j: unknown;
        try {
          j = JSON.parse(v);
        } catch {
          ctx.addIssue({ code: 'custom', message: 'must be JSON: {"hosts": {name: address}, "routes": {address: 127.x.y.z}}' });
          return z.NEVER;
        }
        const r = TestInternet.safeParse(j);
        if (!r.success) {
          ctx.addIssue({ code: 'custom', message: r.error.issues[0]?.message ?? 'invalid' });
          return z.NEVER;
        }
        return r.data;
      })
      .optional(),
    describe: 'TESTS ONLY: sandboxes egress to a simulated internet of loopback servers (JSON hosts and routes); nothing else is dialled',
  },
  templateCache: {
    env: 'CAPSULE_TEMPLATE_CACHE',
    schema: z.string().refine((d) => d === '' || path.isAbsolute(d), 'must be an absolute directory path (or empty for no cache)').optional(),
    describe: 'directory that keeps a copy of debootstrapped templates across data dirs (default /var/cache/capsule/templates for root; empty: none)',
  },
} as const;
export type SettingName = keyof typeof SETTINGS;
export type Settings = { [K in SettingName]: z.output<(typeof SETTINGS)[K]['schema']> };

/**
 * A setting with a bad value: the message names it, shows the value and says what it
 * takes. `source` says whether it came from the environment or a flag.
 */
export class SettingError extends InvalidArgumentError {
  constructor(
    readonly setting: string,
    readonly value: string,
    readonly source: 'env' | 'flag',
    problem: string,
    fallback?: string,
  ) {
    const given = source === 'env' ? `${setting}=${JSON.stringify(value)}` : `${setting} ${JSON.stringify(value)}`;
    const hint = source === 'env' && fallback !== undefined ? `; fix it, or unset ${setting} for the default (${fallback})` : '';
    super(`${given} is not valid: ${problem}${hint}`, { setting, value });
    this.name = 'SettingError';
  }
}

/** The default a setting takes when it is not given, as text (undefined when it has none of its own). */
export function settingDefault(name: SettingName): string | undefined {
  const r = (SETTINGS[name].schema as z.ZodType).safeParse(undefined);
  if (!r.success || r.data === undefined) return undefined;
  return name === 'pools' ? undefined : String(r.data);
}

/**
 * Read and check every setting: flags win over the environment, which wins over the
 * default. Throws a SettingError naming the first bad setting and its value.
 */
export function parseSettings(sources: { env?: NodeJS.ProcessEnv; flags?: Partial<Record<SettingName, string>> } = {}): Settings {
  const env = sources.env ?? process.env;
  const out: Record<string, unknown> = {};
  for (const [name, s] of Object.entries(SETTINGS) as Array<[SettingName, (typeof SETTINGS)[SettingName]]>) {
    const fromFlag = sources.flags?.[name];
    const raw = fromFlag ?? env[s.env];
    // An empty variable is an unset one (as `VAR= cmd` is usually meant), except where empty has its own meaning.
    const unset = fromFlag === undefined && raw === '' && !('emptyIsValue' in s);
    const r = (s.schema as z.ZodType).safeParse(unset ? undefined : raw);
    if (!r.success) {
      const label = fromFlag !== undefined && 'flag' in s ? s.flag : s.env;
      throw new SettingError(label, raw ?? '', fromFlag !== undefined ? 'flag' : 'env', r.error.issues[0]?.message ?? 'invalid', settingDefault(name));
    }
    out[name] = r.data;
  }
  const settings = out as Settings;
  // Settings that only make sense together.
  const pair = (a: SettingName, b: SettingName) => {
    const [va, vb] = [settings[a] as number, settings[b] as number];
    if (va > vb) {
      const sa = SETTINGS[a];
      const label = sources.flags?.[a] !== undefined && 'flag' in sa ? sa.flag : sa.env;
      throw new SettingError(label, String(va), sources.flags?.[a] !== undefined ? 'flag' : 'env', `must not exceed ${SETTINGS[b].env} (${vb})`);
    }
  };
  pair('defaultTimeoutMs', 'maxTimeoutMs');
  pair('defaultDiskMb', 'maxDiskMb');
  return settings;
}

/** Just the data dir (clients looking for the local admin key), so an unrelated bad setting does not stop them. */
export function dataDirFromEnv(env: NodeJS.ProcessEnv = process.env): string {
  const raw = env[SETTINGS.dataDir.env];
  const r = SETTINGS.dataDir.schema.safeParse(raw === '' ? undefined : raw);
  return (r.success ? r.data : undefined) ?? defaultDataDir();
}

/** The daemon's configuration from checked settings; `overrides` (tests, embedded daemons) are taken as given. */
export function loadConfig(
  overrides: Partial<DaemonConfig> = {},
  sources: { env?: NodeJS.ProcessEnv; flags?: Partial<Record<SettingName, string>> } = {},
): DaemonConfig {
  const s = parseSettings(sources);
  return {
    host: s.host,
    port: s.port,
    dataDir: s.dataDir ?? defaultDataDir(),
    runtime: s.runtime,
    isolation: s.isolation,
    defaultTimeoutMs: s.defaultTimeoutMs,
    maxTimeoutMs: s.maxTimeoutMs,
    defaultResources: { cpus: 1, memoryMb: 512, pids: 256, diskMb: s.defaultDiskMb },
    maxDiskMb: s.maxDiskMb,
    idMapBase: 100000,
    idMapSize: 65536,
    reapIntervalMs: 1000,
    defaultDeleteAfterMs: s.defaultDeleteAfterMs,
    historyRetentionMs: s.historyRetentionMs,
    logLevel: s.logLevel,
    auth: !s.noAuth,
    // Unset: the default pool; set (even empty): exactly the pools it lists.
    pools: s.pools ?? { ...DEFAULT_POOLS },
    buildPoolTemplates: s.pools !== undefined,
    metricsOpen: s.metricsOpen,
    microvmAllowTcg: s.microvmAllowTcg,
    microvmKernel: s.microvmKernel ?? null,
    metricsIntervalMs: s.metricsIntervalMs,
    netTestInternet: s.netTestInternet ?? null,
    ...overrides,
  };
}

/** Fixed layout below the data directory, so every room computes paths the same way. */
export function dataPaths(dataDir: string) {
  return {
    db: path.join(dataDir, 'capsule.db'),
    templates: path.join(dataDir, 'templates'),
    templateRootfs: (name: string) => path.join(dataDir, 'templates', name, 'rootfs'),
    /** Content-addressed layer trees (src/layers/store.ts). */
    layers: path.join(dataDir, 'layers'),
    /** Uploaded archives for `copy` steps and image imports, by sha256 (src/templates/blobs.ts). */
    blobs: path.join(dataDir, 'blobs'),
    /** Build logs, one bounded file per build job. */
    buildLogs: path.join(dataDir, 'builds'),
    sandboxes: path.join(dataDir, 'sandboxes'),
    sandboxDir: (id: string) => path.join(dataDir, 'sandboxes', id),
    /** One empty, freshly made ext4 image per common disk size; sandboxes get sparse copies (native/capsule-mount). */
    diskImages: path.join(dataDir, 'disk-images'),
    /** Named volumes: `<id>/disk.img` mounted at `<id>/mnt`, whose `data/` sandboxes bind (src/runtime/volumes.ts). */
    volumes: path.join(dataDir, 'volumes'),
    volumeDir: (id: string) => path.join(dataDir, 'volumes', id),
    /** Listening sockets of the in-sandbox agents: host-root-owned, never mounted into a sandbox. */
    run: path.join(dataDir, 'run'),
    agentSocket: (id: string) => path.join(dataDir, 'run', `${id}.sock`),
    /** The runtime's own state (`crun --root`), separate from any other user of crun on the host. */
    runtimeState: path.join(dataDir, 'runtime'),
    /** gVisor's state (`runsc --root`), apart from the OCI runtime's (src/runtime/gvisor). */
    gvisorState: path.join(dataDir, 'gvisor', 'state'),
    /** Per gVisor sandbox, the host directory its agent's socket is made in (bind-mounted into that sandbox only). */
    gvisorSocketDir: (id: string) => path.join(dataDir, 'gvisor', 'sock', id),
    /** The agent binary copied here at start and bind-mounted read-only into each sandbox. */
    bin: path.join(dataDir, 'bin'),
    /** Compiled seccomp filters (`<sha256>.bpf`), so crun need not compile the profile on every create. */
    seccompCache: path.join(dataDir, 'cache', 'seccomp'),
    /** The first admin key, written once (mode 0600) so the local CLI works without setup. */
    adminKey: path.join(dataDir, 'admin.key'),
    /** Networking sockets and pid files (a folder of its own: `run/*.sock` are agents' sockets, by sandbox id). */
    netRun: path.join(dataDir, 'run', 'net'),
    /** The daemon's gateway: sandboxes' relays hand it every outbound flow and DNS query (src/network/gateway.ts). */
    gatewaySocket: path.join(dataDir, 'run', 'net', 'gateway.sock'),
    /** A sandbox's relay (native/capsule-netrelay.c): its control socket and its pid. */
    relaySocket: (id: string) => path.join(dataDir, 'run', 'net', `${id}.sock`),
    relayPid: (id: string) => path.join(dataDir, 'run', 'net', `${id}.pid`),

  };
}
export type DataPaths = ReturnType<typeof dataPaths>;
