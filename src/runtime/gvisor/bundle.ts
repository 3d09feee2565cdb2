/**
 * The OCI bundle config for a gVisor sandbox: the same policy as a container
 * (bundle.ts: user namespace mapping, limits, capabilities, seccomp, mounts),
 * with the two changes runsc needs. Pure, so it is unit-tested.
 *
 * - The agent cannot inherit a listening fd (runsc has no --preserve-fds: an
 *   inherited fd 3 is EBADF inside), so it binds its socket itself in a
 *   directory bind-mounted from the host, and runsc (`--host-uds=create`)
 *   makes that socket reachable on the host path. Inside, nobody can connect
 *   to it (runsc lets a sandbox create host sockets, not connect to them:
 *   EPERM even for root), and the directory is root's with mode 0700.
 * - The pids limit is enforced by gVisor's kernel, as RLIMIT_NPROC (per user
 *   inside the sandbox, threads included): the host cgroup holds the sentry,
 *   the gofer and, on the ptrace platform, host stub tasks for every guest
 *   task, and keeps a pool of them (measured: 33 host tasks idle; a shell
 *   fork bomb held to 64 guest processes took ~1,700, to 256 ~3,000), so a
 *   host pids.max of `pids` kills the whole sandbox long before its processes
 *   reach it. The host cgroup keeps a much looser cap (gvisorHostTasks) that
 *   only bounds the host; reaching it ends that sandbox.
 */
import path from 'node:path';
import { buildOciSpec, type BundleInput, type OciSpec } from '../bundle.js';
import type { OciSeccomp } from '../seccomp.js';

/** Where the agent's socket directory appears inside a gVisor sandbox. */
export const GVISOR_SOCKET_MOUNT_DIR = '/.capsule-sock';
/** The agent's socket, inside the sandbox and (under the host directory) outside. */
export const GVISOR_SOCKET_NAME = 'agent.sock';

export interface GvisorBundleInput extends Omit<BundleInput, 'runtime' | 'seccompBpf' | 'freshSysfs'> {
  /** Host directory bind-mounted at GVISOR_SOCKET_MOUNT_DIR (owned by the sandbox's root, 0700). */
  socketDir: string;
}

/** Host tasks a gVisor sandbox may use for a guest limit of `pids`: its pids.max on the host. */
export function gvisorHostTasks(pids: number): number {
  return Math.max(4096, 32 * pids);
}

export function buildGvisorSpec(input: GvisorBundleInput): OciSpec {
  if (!path.isAbsolute(input.socketDir)) throw new Error(`socketDir must be absolute: ${input.socketDir}`);
  const { socketDir, ...base } = input;
  const spec = buildOciSpec({ ...base, runtime: 'runsc', seccompBpf: null });
  const resources = spec.linux.resources as { pids: { limit: number } };
  resources.pids = { limit: gvisorHostTasks(input.resources.pids) };
  const rlimits = spec.process.rlimits as { type: string; soft: number; hard: number }[];
  rlimits.push({ type: 'RLIMIT_NPROC', soft: input.resources.pids, hard: input.resources.pids });
  const args = spec.process.args as string[];
  spec.process.args = [args[0]!, '--listen', path.posix.join(GVISOR_SOCKET_MOUNT_DIR, GVISOR_SOCKET_NAME)];
  spec.mounts.push({ destination: GVISOR_SOCKET_MOUNT_DIR, type: 'bind', source: socketDir, options: ['bind', 'rw', 'nosuid', 'nodev', 'noexec'] });
  return spec;
}

/**
 * The sandbox's seccomp policy as gVisor must be given it. runsc (Debian's
 * 20221219) applies `--oci-seccomp` rules but ignores `errnoRet`: every
 * refusal is EPERM. The tightened profile answers clone3 with ENOSYS so that
 * libc falls back to clone, whose flags the filter can see; as EPERM, glibc
 * (2.34+ tries clone3 first and falls back only on ENOSYS) cannot start a
 * single thread: Python's threading, the code interpreter, Node all fail.
 * So clone3 is let through to gVisor's kernel, which in this release does not
 * implement it and answers ENOSYS itself (the security battery's clone3 probe
 * asserts exactly that, so a runsc that implements clone3, and with it
 * namespace flags the filter cannot see, fails the battery). Every other
 * rule is unchanged. Pure; returns a new object.
 */
export function gvisorSeccomp(base: OciSeccomp): OciSeccomp {
  const syscalls = base.syscalls.flatMap((rule) => {
    if (!rule.names.includes('clone3') || rule.action === 'SCMP_ACT_ALLOW') return [rule];
    const rest = rule.names.filter((n) => n !== 'clone3');
    return [...(rest.length > 0 ? [{ ...rule, names: rest }] : []), { names: ['clone3'], action: 'SCMP_ACT_ALLOW' }];
  });
  return { ...base, syscalls };
}
