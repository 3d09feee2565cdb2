/**
 * Seccomp for sandboxes: the container engines' default profile (moby format,
 * shipped by golang-github-containers-common) turned into an OCI
 * `linux.seccomp` object, then tightened where that profile is too open for
 * untrusted code (see shared/HOST-NOTES.md "Seccomp gaps").
 *
 * Everything here except `loadDefaultSeccomp` is pure.
 */
import fs from 'node:fs';
import os from 'node:os';
import { RuntimeError } from '../errors/index.js';

export const DEFAULT_SECCOMP_PROFILE = '/usr/share/containers/seccomp.json';

// ---- moby profile format (only the parts we read) ----

export interface MobyArg {
  index: number;
  value: number;
  valueTwo?: number;
  op: string;
}

export interface MobyFilter {
  caps?: string[];
  arches?: string[];
  minKernel?: string;
}

export interface MobySyscallRule {
  names?: string[];
  name?: string;
  action: string;
  args?: MobyArg[] | null;
  errnoRet?: number;
  includes?: MobyFilter;
  excludes?: MobyFilter;
}

export interface MobyProfile {
  defaultAction: string;
  defaultErrnoRet?: number;
  archMap?: { architecture: string; subArchitectures?: string[] }[];
  architectures?: string[];
  syscalls?: MobySyscallRule[];
}

// ---- OCI runtime-spec linux.seccomp ----

export interface OciSeccompArg {
  index: number;
  value: number;
  valueTwo?: number;
  op: string;
}

export interface OciSeccompSyscall {
  names: string[];
  action: string;
  errnoRet?: number;
  args?: OciSeccompArg[];
}

export interface OciSeccomp {
  defaultAction: string;
  defaultErrnoRet?: number;
  architectures: string[];
  syscalls: OciSeccompSyscall[];
}

export interface ConvertOptions {
  /** Capabilities granted to the sandbox, with or without the `CAP_` prefix. */
  capabilities: readonly string[];
  /** Go-style architecture name the profile's `arches` filters use; default "amd64". */
  arch?: string;
  /** Running kernel version ("6.18.44-..."), for `minKernel` filters; rules with a minKernel are kept when omitted. */
  kernel?: string;
}

const EPERM = 1;
const ENOSYS = 38;

/** clone flags that make new namespaces: NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET. */
export const CLONE_NAMESPACE_FLAGS = 0x7e020000;

/** Syscalls that must never reach the kernel from a sandbox, whatever the base profile says. */
export const DENIED_SYSCALLS: readonly string[] = [
  'unshare',
  'setns',
  'keyctl',
  'add_key',
  'request_key',
  'io_uring_setup',
  'io_uring_enter',
  'io_uring_register',
  'userfaultfd',
  'bpf',
  'perf_event_open',
];

/** Syscalls that get rules of our own below, so the base profile's rules for them are dropped. */
const OVERRIDDEN = new Set<string>(['clone', 'clone3', ...DENIED_SYSCALLS]);

/** Go's names for the Linux architectures, as used in the moby profile's filters, mapped to libseccomp's. */
const GO_TO_SCMP: Record<string, string> = {
  amd64: 'SCMP_ARCH_X86_64',
  arm64: 'SCMP_ARCH_AARCH64',
  s390x: 'SCMP_ARCH_S390X',
};

export function goArch(nodeArch: string = os.arch()): string {
  if (nodeArch === 'x64') return 'amd64';
  return nodeArch;
}

function normCap(c: string): string {
  const u = c.toUpperCase();
  return u.startsWith('CAP_') ? u : `CAP_${u}`;
}

/** Compare "major.minor[.patch...]" prefixes numerically; true when `kernel` >= `min`. */
export function kernelAtLeast(kernel: string, min: string): boolean {
  const parse = (v: string) => (v.match(/^\d+(\.\d+)*/)?.[0] ?? '0').split('.').map(Number);
  const a = parse(kernel);
  const b = parse(min);
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = a[i] ?? 0;
    const y = b[i] ?? 0;
    if (x !== y) return x > y;
  }
  return true;
}

function ruleApplies(rule: MobySyscallRule, caps: Set<string>, arch: string, kernel: string | undefined): boolean {
  const inc = rule.includes ?? {};
  const exc = rule.excludes ?? {};
  if (inc.arches && inc.arches.length > 0 && !inc.arches.includes(arch)) return false;
  if (inc.caps && inc.caps.length > 0 && !inc.caps.every((c) => caps.has(normCap(c)))) return false;
  if (inc.minKernel && kernel && !kernelAtLeast(kernel, inc.minKernel)) return false;
  if (exc.arches && exc.arches.includes(arch)) return false;
  if (exc.caps && exc.caps.some((c) => caps.has(normCap(c)))) return false;
  if (exc.minKernel && kernel && kernelAtLeast(kernel, exc.minKernel)) return false;
  return true;
}

/**
 * Moby profile → OCI seccomp for one architecture and one capability set, as
 * container engines do it: keep the rules whose includes/excludes match,
 * keep names, action, errno and argument conditions.
 */
export function convertMobyProfile(profile: MobyProfile, opts: ConvertOptions): OciSeccomp {
  const arch = opts.arch ?? 'amd64';
  const caps = new Set(opts.capabilities.map(normCap));
  const scmpArch = GO_TO_SCMP[arch];
  if (!scmpArch) throw new RuntimeError(`seccomp: unsupported architecture ${arch}`);

  let architectures: string[] = [];
  const entry = profile.archMap?.find((a) => a.architecture === scmpArch);
  if (entry) architectures = [entry.architecture, ...(entry.subArchitectures ?? [])];
  else if (profile.architectures?.includes(scmpArch)) architectures = [scmpArch];
  else architectures = [scmpArch];

  const syscalls: OciSeccompSyscall[] = [];
  for (const rule of profile.syscalls ?? []) {
    if (!ruleApplies(rule, caps, arch, opts.kernel)) continue;
    const names = rule.names && rule.names.length > 0 ? [...rule.names] : rule.name ? [rule.name] : [];
    if (names.length === 0) continue;
    const out: OciSeccompSyscall = { names, action: rule.action };
    if (rule.action === 'SCMP_ACT_ERRNO' || rule.action === 'SCMP_ACT_TRACE') {
      if (rule.errnoRet !== undefined) out.errnoRet = rule.errnoRet;
    }
    if (rule.args && rule.args.length > 0) {
      out.args = rule.args.map((a) => ({ index: a.index, value: a.value, valueTwo: a.valueTwo ?? 0, op: a.op }));
    }
    syscalls.push(out);
  }
  const result: OciSeccomp = { defaultAction: profile.defaultAction, architectures, syscalls };
  if (profile.defaultErrnoRet !== undefined) result.defaultErrnoRet = profile.defaultErrnoRet;
  return result;
}

/**
 * Close the gaps of the default profile: no new namespaces by clone/unshare/
 * setns, clone3 answers ENOSYS (libc then falls back to clone, whose flags a
 * filter can see), no keyrings, io_uring, userfaultfd, bpf or perf.
 * Returns a new object; the input is not changed.
 */
export function tightenSeccomp(base: OciSeccomp): OciSeccomp {
  const syscalls: OciSeccompSyscall[] = [];
  for (const rule of base.syscalls) {
    const names = rule.names.filter((n) => !OVERRIDDEN.has(n));
    if (names.length === 0) continue;
    syscalls.push({ ...rule, names });
  }
  // clone without namespace flags: allowed (fork, vfork, threads).
  syscalls.push({
    names: ['clone'],
    action: 'SCMP_ACT_ALLOW',
    args: [{ index: 0, value: CLONE_NAMESPACE_FLAGS, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }],
  });
  // clone with any namespace flag: EPERM (one rule per flag bit; the rules above and below are disjoint).
  for (let bit = 0; bit < 32; bit++) {
    const f = 2 ** bit;
    if ((CLONE_NAMESPACE_FLAGS & f) === 0) continue;
    syscalls.push({
      names: ['clone'],
      action: 'SCMP_ACT_ERRNO',
      errnoRet: EPERM,
      args: [{ index: 0, value: f, valueTwo: f, op: 'SCMP_CMP_MASKED_EQ' }],
    });
  }
  syscalls.push({ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS });
  syscalls.push({ names: [...DENIED_SYSCALLS], action: 'SCMP_ACT_ERRNO', errnoRet: EPERM });
  return { ...base, syscalls };
}

/** Pure: profile JSON + capabilities → the sandbox's seccomp object. */
export function buildSandboxSeccomp(profile: MobyProfile, opts: ConvertOptions): OciSeccomp {
  return tightenSeccomp(convertMobyProfile(profile, opts));
}

const cache = new Map<string, OciSeccomp>();

/**
 * Read the default profile from disk and build the sandbox filter, once per
 * (file, capability set). Throws a RuntimeError saying what to install when
 * the file is missing.
 */
export function loadDefaultSeccomp(capabilities: readonly string[], file: string = DEFAULT_SECCOMP_PROFILE): OciSeccomp {
  const key = `${file}\0${[...capabilities].map(normCap).sort().join(',')}`;
  const hit = cache.get(key);
  if (hit) return hit;
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new RuntimeError(
      `seccomp profile ${file} is missing: apt-get install golang-github-containers-common`,
      { file },
      { cause: e },
    );
  }
  let profile: MobyProfile;
  try {
    profile = JSON.parse(text) as MobyProfile;
  } catch (e) {
    throw new RuntimeError(
      `seccomp profile ${file} is not valid JSON: apt-get install --reinstall golang-github-containers-common`,
      { file },
      { cause: e },
    );
  }
  const result = buildSandboxSeccomp(profile, { capabilities, arch: goArch(), kernel: os.release() });
  cache.set(key, result);
  return result;
}
