/**
 * The OCI bundle config (runtime-spec 1.0.x) for one sandbox. Pure: every
 * host fact comes in through `BundleInput`, so the whole policy is unit-tested.
 */
import path from 'node:path';
import type { ResourceLimits } from '../config/index.js';
import type { RuntimeFlavor } from './oci-cli.js';
import type { OciSeccomp } from './seccomp.js';
import { SECCOMP_BPF_ANNOTATION } from './seccomp-bpf.js';

/** Where the agent's host directory appears inside every sandbox. */
export const AGENT_MOUNT_DIR = '/.capsule';
/** The fd the agent's listening socket has inside the container (passed with --preserve-fds 1). */
export const AGENT_LISTEN_FD = 3;
export const CPU_PERIOD_US = 100_000;
/**
 * Where the agent's socket directory appears inside a sandbox whose agent binds its own socket
 * (`agentSocketDir`: runc sandboxes, which CRIU can checkpoint), and the socket's name there and on the host.
 */
export const AGENT_SOCKET_MOUNT_DIR = '/.capsule-sock';
export const AGENT_SOCKET_NAME = 'agent.sock';

/** What an unprivileged container gets from podman by default. */
export const SANDBOX_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_NET_BIND_SERVICE',
  'CAP_SETFCAP',
  'CAP_SETGID',
  'CAP_SETPCAP',
  'CAP_SETUID',
  'CAP_SYS_CHROOT',
];

export const MASKED_PATHS: readonly string[] = [
  '/proc/acpi',
  '/proc/asound',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/sys/fs/selinux',
  '/sys/dev/block',
  '/sys/devices/virtual/powercap',
];

export const READONLY_PATHS: readonly string[] = [
  '/proc/bus',
  '/proc/fs',
  '/proc/irq',
  '/proc/sys',
  '/proc/sysrq-trigger',
];

export interface BundleInput {
  id: string;
  /** Absolute host path of the overlay's merged dir. */
  rootfs: string;
  /** Absolute host path of the agent binary; its file name is the agent's name inside. */
  agentBinary: string;
  /**
   * Host directory bind-mounted at /.capsule, holding a file named like
   * agentBinary; default its directory. The driver passes a copy on the
   * sandbox's own disk: a bind mount's source path shows in the sandbox's
   * /proc/self/mountinfo, and a path inside that disk names nothing on the host.
   */
  agentDir?: string;
  resources: Pick<ResourceLimits, 'cpus' | 'memoryMb' | 'pids'>;
  /** Host directories bound into the sandbox (named volumes), after every other mount. */
  binds?: ReadonlyArray<{ source: string; destination: string; readOnly: boolean }>;
  idMapBase: number;
  idMapSize: number;
  /** linux.seccomp; omitted when null (tests, or a runtime that brings its own). */
  seccomp: OciSeccomp | null;
  /**
   * `seccomp` compiled to BPF (base64), for crun's `run.oci.seccomp_bpf_data`
   * annotation; used only when `runtime` is crun (runc ignores the annotation).
   */
  seccompBpf?: string | null;
  /** Which OCI runtime reads the bundle; decides whether the precompiled filter goes in. */
  runtime?: RuntimeFlavor;
  /** Set memory.memsw (memory+swap) equal to memory so no swap is added; false when the host lacks swap accounting. */
  swapAccounting?: boolean;
  /**
   * Mount a fresh sysfs (needs the netns owned by the sandbox's userns, which
   * is the case here); when false, bind the host /sys read-only instead.
   */
  freshSysfs?: boolean;
  /** Extra environment for the agent. */
  env?: Record<string, string>;
  /** Leave no_new_privs off so setuid programs work (ContainerSpec.allowSetuid). */
  allowSetuid?: boolean;
  /**
   * Host directory (owned by the sandbox's root, 0700) bind-mounted at AGENT_SOCKET_MOUNT_DIR: the agent binds
   * its socket there itself and swaps its stdio for the container's /dev/null, instead of inheriting a
   * listening fd and host stdio. A process holding only its own container's files is what CRIU can dump
   * and restore (memory snapshots, docs/adr/0018-memory-snapshots.md).
   */
  agentSocketDir?: string;
}

/** The subset of runtime-spec we write; kept loose where the spec is. */
export interface OciSpec {
  ociVersion: string;
  process: Record<string, unknown>;
  root: { path: string; readonly: boolean };
  hostname: string;
  mounts: { destination: string; type: string; source: string; options?: string[] }[];
  linux: Record<string, unknown>;
  annotations?: Record<string, string>;
}

/** Path of the agent inside the sandbox. */
export function agentPathInSandbox(agentBinary: string): string {
  return path.posix.join(AGENT_MOUNT_DIR, path.basename(agentBinary));
}

/** memory.limit_in_bytes for a limit in MiB: one formula for create and for update. */
export function memoryBytes(memoryMb: number): number {
  return Math.floor(memoryMb * 1024 * 1024);
}

/** CFS quota per CPU_PERIOD_US for a share in cores (the kernel refuses less than 1 ms). */
export function cpuQuotaUs(cpus: number): number {
  return Math.max(1000, Math.round(cpus * CPU_PERIOD_US));
}

export function cgroupsPathFor(id: string): string {
  return `/capsule/${id}`;
}

/**
 * tmpfs mounts inside the sandbox (/dev, /dev/shm) are charged to the sandbox's
 * memory cgroup, and their pages and inodes stay charged when processes die: a
 * sandbox that fills them up to the memory limit leaves the OOM killer nothing
 * to free but the agent (pid 1). So both are sized well below the memory limit
 * and their inode counts are capped (empty files cost ~1 KiB of kernel memory
 * each and are not limited by `size`).
 */
export function tmpfsLimits(memoryMb: number): { devKb: number; devInodes: number; shmKb: number; shmInodes: number } {
  const memKb = Math.max(1024, Math.floor(memoryMb * 1024));
  const clamp = (v: number, lo: number, hi: number) => Math.max(lo, Math.min(hi, Math.floor(v)));
  return {
    devKb: clamp(memKb / 16, 1024, 65536),
    devInodes: clamp(memKb / 64, 256, 4096),
    shmKb: clamp(memKb / 4, 1024, 65536),
    shmInodes: clamp(memKb / 16, 1024, 65536),
  };
}

function allowDev(type: 'c', major: number, minor: number | null) {
  return minor === null
    ? { allow: true, type, major, access: 'rwm' }
    : { allow: true, type, major, minor, access: 'rwm' };
}

export function buildOciSpec(input: BundleInput): OciSpec {
  if (!path.isAbsolute(input.rootfs)) throw new Error(`rootfs must be absolute: ${input.rootfs}`);
  if (!path.isAbsolute(input.agentBinary)) throw new Error(`agentBinary must be absolute: ${input.agentBinary}`);
  const { resources } = input;
  const memBytes = memoryBytes(resources.memoryMb);
  const tmpfs = tmpfsLimits(resources.memoryMb);
  const caps = [...SANDBOX_CAPABILITIES];
  const env = {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: '/root',
    TERM: 'xterm',
    LANG: 'C.UTF-8',
    ...(input.env ?? {}),
  };

  const sysMount =
    input.freshSysfs === false
      ? { destination: '/sys', type: 'bind', source: '/sys', options: ['rbind', 'nosuid', 'noexec', 'nodev', 'ro'] }
      : { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] };

  const memory: Record<string, number> = { limit: memBytes };
  if (input.swapAccounting !== false) memory.swap = memBytes;

  const linux: Record<string, unknown> = {
    uidMappings: [{ containerID: 0, hostID: input.idMapBase, size: input.idMapSize }],
    gidMappings: [{ containerID: 0, hostID: input.idMapBase, size: input.idMapSize }],
    namespaces: [
      { type: 'pid' },
      { type: 'network' },
      { type: 'ipc' },
      { type: 'uts' },
      { type: 'mount' },
      { type: 'user' },
      { type: 'cgroup' },
    ],
    cgroupsPath: cgroupsPathFor(input.id),
    resources: {
      devices: [
        { allow: false, access: 'rwm' },
        allowDev('c', 1, 3), // null
        allowDev('c', 1, 5), // zero
        allowDev('c', 1, 7), // full
        allowDev('c', 1, 8), // random
        allowDev('c', 1, 9), // urandom
        allowDev('c', 5, 0), // tty
        allowDev('c', 5, 2), // ptmx
        allowDev('c', 136, null), // /dev/pts/*
      ],
      memory,
      cpu: { quota: cpuQuotaUs(resources.cpus), period: CPU_PERIOD_US },
      pids: { limit: resources.pids },
    },
    maskedPaths: [...MASKED_PATHS],
    readonlyPaths: [...READONLY_PATHS],
  };
  if (input.seccomp) linux.seccomp = input.seccomp;
  // crun then loads this program instead of compiling linux.seccomp (its flags still apply). The
  // object stays too: a crun that did not know the annotation would otherwise run with no filter at all.
  const annotations: Record<string, string> = {};
  if (input.seccomp && input.seccompBpf && input.runtime === 'crun') annotations[SECCOMP_BPF_ANNOTATION] = input.seccompBpf;

  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args: input.agentSocketDir
        ? [agentPathInSandbox(input.agentBinary), '--listen', path.posix.join(AGENT_SOCKET_MOUNT_DIR, AGENT_SOCKET_NAME), '--null-stdio']
        : [agentPathInSandbox(input.agentBinary), '--listen-fd', String(AGENT_LISTEN_FD)],
      env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      cwd: '/',
      capabilities: {
        bounding: caps,
        effective: caps,
        permitted: caps,
        inheritable: [],
        ambient: [],
      },
      rlimits: [{ type: 'RLIMIT_NOFILE', soft: 1024, hard: 4096 }],
      noNewPrivileges: input.allowSetuid !== true,
    },
    root: { path: input.rootfs, readonly: false },
    hostname: input.id,
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
      {
        destination: '/dev',
        type: 'tmpfs',
        source: 'tmpfs',
        options: ['nosuid', 'strictatime', 'mode=755', `size=${tmpfs.devKb}k`, `nr_inodes=${tmpfs.devInodes}`],
      },
      {
        destination: '/dev/pts',
        type: 'devpts',
        source: 'devpts',
        options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
      },
      {
        destination: '/dev/shm',
        type: 'tmpfs',
        source: 'shm',
        options: ['nosuid', 'noexec', 'nodev', 'mode=1777', `size=${tmpfs.shmKb}k`, `nr_inodes=${tmpfs.shmInodes}`],
      },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      sysMount,
      {
        destination: AGENT_MOUNT_DIR,
        type: 'bind',
        source: input.agentDir ?? path.dirname(input.agentBinary),
        options: ['bind', 'ro', 'nosuid', 'nodev'],
      },
      ...(input.agentSocketDir
        ? [{ destination: AGENT_SOCKET_MOUNT_DIR, type: 'bind', source: input.agentSocketDir, options: ['bind', 'rw', 'nosuid', 'nodev', 'noexec'] }]
        : []),
      ...(input.binds ?? []).map((b) => ({
        destination: b.destination,
        type: 'bind',
        source: b.source,
        options: ['bind', 'nosuid', 'nodev', ...(b.readOnly ? ['ro'] : [])],
      })),
    ],
    linux,
    ...(Object.keys(annotations).length > 0 ? { annotations } : {}),
  };
}
