/**
 * Host checks for running sandboxes, each with the exact fix. `runDoctor`
 * backs `capsule doctor [--fix]`; `ensureHostReady` runs at daemon start,
 * applies the safe fixes and refuses to go on while something is still wrong.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { RuntimeError } from '../errors/index.js';
import { cgroupMounts, hybridControllers } from './cgroups.js';
import { OciCli, resolveBinary, runtimeFlavor } from './oci-cli.js';
import { checkSandboxDisk } from './doctor-disk.js';
import { checkDataDir } from './doctor-datadir.js';
import { runTool } from './overlay.js';
import { SANDBOX_CAPABILITIES } from './bundle.js';
import { DEFAULT_SECCOMP_PROFILE, loadDefaultSeccomp } from './seccomp.js';
import { SeccompBpfCompiler } from './seccomp-bpf.js';
import { checkGvisor } from './gvisor/doctor.js';
import { checkMicrovm } from './microvm/doctor.js';
import { checkMemorySnapshots } from './doctor-criu.js';

export interface DoctorCheck {
  name: string;
  ok: boolean;
  /** True when this run repaired it (`fix: true`). */
  fixed?: boolean;
  message: string;
  /** What to run to fix it, when not ok. */
  fix?: string;
}

export interface DoctorOptions {
  runtime: string;
  fix: boolean;
  /** Where busybox is expected (the template builder copies it). */
  busybox?: string;
  seccompProfile?: string;
  /** The seccomp filter compiler (default dist/native/capsule-seccomp-bpf). */
  seccompTool?: string;
  /** The native mount helper (default dist/native/capsule-mount). */
  mountHelper?: string;
  /**
   * Where the trial sandbox disk is made: the data dir, so the check covers
   * the filesystem sandbox images will live on (sparse files, hole punching).
   * Default: the system temp dir.
   */
  scratchDir?: string;
  /** The daemon's data dir: checked to be reachable by sandbox root (host uid/gid `idMapBase`). */
  dataDir?: string;
  idMapBase?: number;
  /** Check gVisor (runsc) too, with a trial sandbox; `fix` then installs it. Default true; daemon start skips it. */
  gvisor?: boolean;
  /** Check microVMs (QEMU, guest kernel, accelerator); `fix` then installs QEMU and the kernel. Default true; daemon start skips it. */
  microvm?: boolean;
  /** Check CRIU 4 (memory snapshots); `fix` then builds it (about a minute, once). Default true; daemon start skips it. */
  criu?: boolean;
}

/** Checks whose failure makes sandboxes slower or templates unbuildable, but not unsafe: they never block the daemon. */
const ADVISORY = new Set(['busybox-static', 'seccomp precompiled', 'egress (nftables)', 'gvisor', 'microvm', 'memory snapshots (criu)']);

/** v1 controllers a sandbox's limits and lifecycle need. */
const REQUIRED_V1 = ['memory', 'pids', 'cpu', 'devices', 'freezer'];

async function checkRuntime(runtime: string): Promise<DoctorCheck> {
  const bin = resolveBinary(runtime);
  const pkg = runtimeFlavor(runtime) === 'runc' ? 'runc' : runtimeFlavor(runtime) === 'runsc' ? 'runsc (gVisor)' : 'crun';
  if (!bin) {
    return {
      name: 'runtime',
      ok: false,
      message: `OCI runtime ${runtime} not found`,
      fix: runtime.includes('/') ? `install ${pkg} at ${runtime}, or set CAPSULE_RUNTIME=crun` : `apt-get install ${pkg}`,
    };
  }
  try {
    const r = await new OciCli(bin, '/run/capsule-doctor-unused').runCaptured(['--version'], { timeoutMs: 10_000 });
    const first = r.stdout.split('\n')[0]?.trim() ?? '';
    if (r.code !== 0) return { name: 'runtime', ok: false, message: `${bin} --version failed: ${r.stderr.trim()}`, fix: `apt-get install --reinstall ${pkg}` };
    return { name: 'runtime', ok: true, message: `${bin}: ${first}` };
  } catch (e) {
    return { name: 'runtime', ok: false, message: `${bin} does not run: ${(e as Error).message}`, fix: `apt-get install --reinstall ${pkg}` };
  }
}

function checkRoot(): DoctorCheck {
  const uid = process.getuid?.() ?? -1;
  if (uid === 0) return { name: 'root', ok: true, message: 'running as root' };
  return {
    name: 'root',
    ok: false,
    message: `running as uid ${uid}: rootless containers on cgroup v1 silently ignore memory/CPU/pids limits`,
    fix: 'run the daemon as root (sudo capsule serve)',
  };
}

async function checkCgroups(fix: boolean): Promise<DoctorCheck> {
  const mounts = await cgroupMounts();
  const v1 = new Set(mounts.filter((m) => m.version === 1).flatMap((m) => m.controllers));
  const hasV1 = v1.size > 0;
  if (!hasV1) {
    // Pure cgroup v2 host: crun handles it natively.
    return mounts.some((m) => m.version === 2)
      ? { name: 'cgroups', ok: true, message: 'cgroup v2 (unified)' }
      : { name: 'cgroups', ok: false, message: 'no cgroup filesystem mounted', fix: 'mount -t cgroup2 none /sys/fs/cgroup' };
  }
  const missing = REQUIRED_V1.filter((c) => !v1.has(c));
  if (missing.length > 0) {
    return {
      name: 'cgroups',
      ok: false,
      message: `cgroup v1 controllers not mounted: ${missing.join(', ')}`,
      fix: missing.map((c) => `mkdir -p /sys/fs/cgroup/${c} && mount -t cgroup -o ${c} cgroup /sys/fs/cgroup/${c}`).join(' && '),
    };
  }
  const hybrid = await hybridControllers(mounts);
  if (!hybrid) return { name: 'cgroups', ok: true, message: 'cgroup v1 with every controller on a v1 hierarchy' };
  const base = path.dirname(hybrid.mountPoint);
  const cmds = hybrid.controllers.map((c) => `mkdir -p ${base}/${c} && mount -t cgroup -o ${c} cgroup ${base}/${c}`);
  const fixText = cmds.join(' && ');
  const message = `the cgroup2 mount ${hybrid.mountPoint} holds controllers (${hybrid.controllers.join(', ')}); crun refuses to start containers in this "hybrid" layout`;
  if (!fix) return { name: 'cgroups', ok: false, message, fix: fixText };
  const errors: string[] = [];
  for (const c of hybrid.controllers) {
    const dir = path.join(base, c);
    try {
      await fsp.mkdir(dir, { recursive: true });
      const r = await runTool('mount', ['-t', 'cgroup', '-o', c, 'cgroup', dir]);
      if (r.code !== 0) errors.push(`${c}: ${r.stderr}`);
    } catch (e) {
      errors.push(`${c}: ${(e as Error).message}`);
    }
  }
  const after = await hybridControllers();
  if (!after) return { name: 'cgroups', ok: true, fixed: true, message: `moved ${hybrid.controllers.join(', ')} to v1 hierarchies` };
  return {
    name: 'cgroups',
    ok: false,
    message: `${message}; fixing failed: ${errors.join('; ') || `still enabled: ${after.controllers.join(', ')}`}`,
    fix: fixText,
  };
}

async function checkOverlay(fix: boolean): Promise<DoctorCheck> {
  const has = async () => /\toverlay$/m.test(await fsp.readFile('/proc/filesystems', 'utf8'));
  if (await has()) return { name: 'overlayfs', ok: true, message: 'overlay filesystem available' };
  if (fix) {
    try {
      await runTool('modprobe', ['overlay']);
    } catch {
      // reported below
    }
    if (await has()) return { name: 'overlayfs', ok: true, fixed: true, message: 'loaded the overlay module' };
  }
  return { name: 'overlayfs', ok: false, message: 'overlayfs is not available in this kernel', fix: 'modprobe overlay (or use a kernel with CONFIG_OVERLAY_FS)' };
}

async function checkUserns(): Promise<DoctorCheck> {
  let max = 0;
  try {
    max = Number((await fsp.readFile('/proc/sys/user/max_user_namespaces', 'utf8')).trim());
  } catch {
    return { name: 'user namespaces', ok: false, message: 'kernel without user namespaces', fix: 'use a kernel with CONFIG_USER_NS=y' };
  }
  if (!(max > 0)) {
    return { name: 'user namespaces', ok: false, message: `user.max_user_namespaces is ${max}`, fix: 'sysctl -w user.max_user_namespaces=15000' };
  }
  let r: { code: number | null; stderr: string };
  try {
    r = await runTool('unshare', ['-U', 'true'], 10_000);
  } catch (e) {
    return { name: 'user namespaces', ok: false, message: `cannot run unshare: ${(e as Error).message}`, fix: 'apt-get install util-linux' };
  }
  if (r.code !== 0) {
    return {
      name: 'user namespaces',
      ok: false,
      message: `unshare -U failed: ${r.stderr}`,
      fix: 'sysctl -w kernel.unprivileged_userns_clone=1; check AppArmor/LSM policy on user namespaces',
    };
  }
  return { name: 'user namespaces', ok: true, message: `user namespaces work (max ${max})` };
}

function checkSeccomp(file: string): DoctorCheck {
  try {
    JSON.parse(fs.readFileSync(file, 'utf8'));
    return { name: 'seccomp profile', ok: true, message: file };
  } catch (e) {
    const missing = (e as NodeJS.ErrnoException).code === 'ENOENT';
    return {
      name: 'seccomp profile',
      ok: false,
      message: missing ? `${file} is missing` : `${file} is unreadable: ${(e as Error).message}`,
      fix: missing ? 'apt-get install golang-github-containers-common' : 'apt-get install --reinstall golang-github-containers-common',
    };
  }
}

/**
 * Whether crun gets the filter precompiled: compiles the real sandbox policy
 * once, the way every create would. Failing is advisory: crun then compiles
 * linux.seccomp itself on each create, ~15-25 ms slower, equally strict.
 */
async function checkSeccompBpf(runtime: string, profile: string, tool: string | undefined): Promise<DoctorCheck> {
  const name = 'seccomp precompiled';
  const flavor = runtimeFlavor(runtime);
  if (flavor !== 'crun') return { name, ok: true, message: `no: ${flavor} ignores precompiled filters and compiles linux.seccomp itself` };
  const compiler = new SeccompBpfCompiler(tool ? { tool } : {});
  try {
    const bpf = await compiler.compile(loadDefaultSeccomp(SANDBOX_CAPABILITIES, profile));
    return { name, ok: true, message: `yes: ${bpf.length / 8} BPF instructions by ${await compiler.version()}, handed to crun as run.oci.seccomp_bpf_data` };
  } catch (e) {
    return {
      name,
      ok: false,
      message: `no: ${(e as Error).message}; crun compiles the filter on every create instead (slower, still enforced)`,
      fix: 'npm run build (needs gcc and libseccomp-dev: apt-get install gcc libseccomp-dev)',
    };
  }
}

/** True when the ELF file has no PT_INTERP program header (statically linked). */
export function isStaticElf(buf: Buffer): boolean {
  if (buf.length < 64 || buf.readUInt32BE(0) !== 0x7f454c46) return false;
  const is64 = buf[4] === 2;
  const le = buf[5] === 1;
  const u16 = (o: number) => (le ? buf.readUInt16LE(o) : buf.readUInt16BE(o));
  const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const phoff = is64 ? Number(le ? buf.readBigUInt64LE(0x20) : buf.readBigUInt64BE(0x20)) : u32(0x1c);
  const phentsize = u16(is64 ? 0x36 : 0x2a);
  const phnum = u16(is64 ? 0x38 : 0x2c);
  for (let i = 0; i < phnum; i++) {
    const off = phoff + i * phentsize;
    if (off + 4 > buf.length) return false;
    if (u32(off) === 3) return false; // PT_INTERP
  }
  return true;
}

function checkBusybox(file: string): DoctorCheck {
  const fix = 'apt-get install busybox-static';
  let fd: number | null = null;
  try {
    fd = fs.openSync(file, 'r');
    const head = Buffer.alloc(4096);
    const n = fs.readSync(fd, head, 0, head.length, 0);
    if (!isStaticElf(head.subarray(0, n))) {
      return { name: 'busybox-static', ok: false, message: `${file} is dynamically linked (the busybox package, not busybox-static)`, fix };
    }
    return { name: 'busybox-static', ok: true, message: `${file} (static)` };
  } catch {
    return { name: 'busybox-static', ok: false, message: `${file} not found`, fix };
  } finally {
    if (fd !== null) fs.closeSync(fd);
  }
}

/** Sandboxes with egress need nft for the redirect table in their namespace (ADR 0012); without it they get `none` only. */
function checkNft(): DoctorCheck {
  const found = ['/usr/sbin/nft', '/sbin/nft', '/usr/bin/nft'].find((p) => fs.existsSync(p));
  return found
    ? { name: 'egress (nftables)', ok: true, message: `${found}` }
    : { name: 'egress (nftables)', ok: false, message: 'nft not found: sandboxes can only have egress none', fix: 'apt-get install nftables' };
}

export async function runDoctor(opts: DoctorOptions): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  checks.push(await checkRuntime(opts.runtime));
  checks.push(checkRoot());
  const root = process.getuid?.() === 0;
  checks.push(await checkCgroups(opts.fix && root));
  checks.push(await checkOverlay(opts.fix && root));
  checks.push(await checkUserns());
  if (opts.dataDir !== undefined) checks.push(checkDataDir(opts.dataDir, opts.idMapBase ?? 100000));
  checks.push(...(await checkSandboxDisk(opts.fix && root, opts.mountHelper, opts.scratchDir)));
  checks.push(checkSeccomp(opts.seccompProfile ?? DEFAULT_SECCOMP_PROFILE));
  checks.push(await checkSeccompBpf(opts.runtime, opts.seccompProfile ?? DEFAULT_SECCOMP_PROFILE, opts.seccompTool));
  checks.push(checkBusybox(opts.busybox ?? '/bin/busybox'));
  checks.push(checkNft());
  if (opts.gvisor !== false) checks.push(await checkGvisor(opts.fix && root));
  if (opts.microvm !== false) checks.push(await checkMicrovm(opts.fix && root));
  if (opts.criu !== false) checks.push(await checkMemorySnapshots(opts.fix && root, opts.runtime));
  return checks;
}

/** One line per check, for the CLI and logs. */
export function formatDoctor(checks: DoctorCheck[]): string {
  return checks
    .map((c) => `${c.ok ? (c.fixed ? 'FIXED' : 'ok   ') : 'FAIL '} ${c.name}: ${c.message}${!c.ok && c.fix ? `\n      fix: ${c.fix}` : ''}`)
    .join('\n');
}

/**
 * Apply the safe fixes (cgroup layout, overlay module) and throw a
 * RuntimeError naming every check that still fails, with its fix.
 * Returns the checks (for a startup log line).
 */
export async function ensureHostReady(runtime: string, opts: Omit<DoctorOptions, 'runtime' | 'fix'> = {}): Promise<DoctorCheck[]> {
  // gVisor is optional (the daemon probes runsc itself) and its check installs packages with fix: not at every start.
  const checks = await runDoctor({ runtime, fix: true, gvisor: false, microvm: false, criu: false, ...opts });
  // busybox is only needed to build templates and the precompiled filter only saves time; everything else blocks sandboxes.
  const blocking = checks.filter((c) => !c.ok && !ADVISORY.has(c.name));
  if (blocking.length > 0) {
    throw new RuntimeError(
      `host is not ready for sandboxes:\n${blocking.map((c) => `- ${c.name}: ${c.message}${c.fix ? ` (fix: ${c.fix})` : ''}`).join('\n')}`,
      { checks: blocking },
    );
  }
  return checks;
}
