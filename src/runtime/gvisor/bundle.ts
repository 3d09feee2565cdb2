/**
 * The OCI bundle config for a gVisor sandbox: the same policy as a container
 * (bundle.ts: user namespace mapping, limits, capabilities, seccomp, mounts),
 * with the two changes runsc needs. Pure, so it is unit-tested.
 *
 * - The agent cannot inherit a listening fd (runsc has no --preserve-fds: an
 *   inherited fd 3 is EBADF inside), so it binds its socket itself in a
 *   directory bind-mounted from the host, and runsc (`--host-uds=create`)
 *   makes that socket reachable on the host path. The directory is owned by
 *   the sandbox's root with mode 0700: inside, only root (who could run any
 *   command anyway) can reach the agent.
 * - /tmp is bound onto the sandbox's own disk: left alone, runsc mounts a
 *   tmpfs there, and files in /tmp would count against memory (and OOM-kill
 *   the whole sandbox) instead of filling the disk quota as under crun. The
 *   driver passes the rootfs's /tmp only when it is a real directory: the
 *   host resolves a bind source, so a template's /tmp symlink must never be
 *   followed there.
 * - The pids limit is enforced by gVisor's kernel, as RLIMIT_NPROC (per user
 *   inside the sandbox, threads included): the host cgroup holds the sentry,
 *   the gofer and, on the ptrace platform, host stub tasks for every guest
 *   task (measured: 33 host tasks idle, ~8 more per sleeping guest process),
 *   so a host pids.max of `pids` kills the whole sandbox long before its
 *   processes reach it. The host cgroup keeps a looser cap
 *   (gvisorHostTasks) that only bounds the host.
 */
import path from 'node:path';
import { buildOciSpec, type BundleInput, type OciSpec } from '../bundle.js';

/** Where the agent's socket directory appears inside a gVisor sandbox. */
export const GVISOR_SOCKET_MOUNT_DIR = '/.capsule-sock';
/** The agent's socket, inside the sandbox and (under the host directory) outside. */
export const GVISOR_SOCKET_NAME = 'agent.sock';

export interface GvisorBundleInput extends Omit<BundleInput, 'runtime' | 'seccompBpf' | 'freshSysfs'> {
  /** Host directory bind-mounted at GVISOR_SOCKET_MOUNT_DIR (owned by the sandbox's root, 0700). */
  socketDir: string;
  /** Host directory (the rootfs's own /tmp, checked not to be a symlink) bound at /tmp; null leaves runsc's tmpfs. */
  tmpDir: string | null;
}

/** Host tasks a gVisor sandbox may use for a guest limit of `pids`: its pids.max on the host. */
export function gvisorHostTasks(pids: number): number {
  return 16 * pids + 256;
}

export function buildGvisorSpec(input: GvisorBundleInput): OciSpec {
  if (!path.isAbsolute(input.socketDir)) throw new Error(`socketDir must be absolute: ${input.socketDir}`);
  const { socketDir, tmpDir, ...base } = input;
  const spec = buildOciSpec({ ...base, runtime: 'runsc', seccompBpf: null });
  const resources = spec.linux.resources as { pids: { limit: number } };
  resources.pids = { limit: gvisorHostTasks(input.resources.pids) };
  const rlimits = spec.process.rlimits as { type: string; soft: number; hard: number }[];
  rlimits.push({ type: 'RLIMIT_NPROC', soft: input.resources.pids, hard: input.resources.pids });
  const args = spec.process.args as string[];
  spec.process.args = [args[0]!, '--listen', path.posix.join(GVISOR_SOCKET_MOUNT_DIR, GVISOR_SOCKET_NAME)];
  spec.mounts.push({ destination: GVISOR_SOCKET_MOUNT_DIR, type: 'bind', source: socketDir, options: ['bind', 'rw', 'nosuid', 'nodev', 'noexec'] });
  if (tmpDir !== null) {
    if (!path.isAbsolute(tmpDir)) throw new Error(`tmpDir must be absolute: ${tmpDir}`);
    spec.mounts.push({ destination: '/tmp', type: 'bind', source: tmpDir, options: ['bind', 'rw', 'nosuid', 'nodev'] });
  }
  return spec;
}
