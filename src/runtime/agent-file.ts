/**
 * The file handoff (ADR 0016, "File write: the daemon fills the agent's file"): the agent creates an upload's
 * temp file inside the sandbox, as always, and names it by descriptor and inode; the daemon opens that same
 * file through the host's /proc and writes the upload into it itself. Each byte is then copied three times
 * (client send, daemon receive, daemon write), as through `crun exec cat`, instead of five.
 *
 * The agent runs inside the sandbox and is not trusted: it could name any descriptor it holds. The daemon
 * writes as host root, so this module opens a descriptor only when it is exactly what a fresh upload's temp
 * file is: an empty regular file with one link and the announced inode, on the mount that is the agent's own
 * root, where the agent's root is this sandbox's root filesystem. Anything else (a volume, a device, a file
 * that already has data, a process that is not this sandbox's agent) is declined, and the upload goes through
 * the agent as data frames instead. Opening through O_PATH first means nothing is opened for writing, nor a
 * device or FIFO opened at all, before the checks pass; they then hold for the descriptor that is reopened.
 *
 * Synchronous on purpose: a dozen system calls on /proc and one open of an empty file take ~0.1 ms together,
 * where the same through the thread pool took 2-5 ms per upload here.
 */
import fs from 'node:fs';

/** O_PATH (Linux): a descriptor naming a file without opening it for I/O; fstat works on it. (libuv adds O_CLOEXEC to every open.) */
const O_PATH = 0o10000000;
const MAX_FD = 1 << 20;

/** Why a handoff was declined; for the debug log only. */
export type HandoffRefusal = string;

/**
 * Opens for writing descriptor `fd` of process `pid` when the checks above pass (the descriptor is the
 * caller's to close), else says why not.
 * `rootfs` is the sandbox's root filesystem as mounted on the host.
 */
export function openAgentFile(pid: number, fd: number, ino: bigint, rootfs: string): number | HandoffRefusal {
  if (process.platform !== 'linux') return 'not on Linux';
  if (!Number.isInteger(pid) || pid <= 1) return `no agent process (${pid})`;
  if (!Number.isInteger(fd) || fd < 0 || fd >= MAX_FD) return `descriptor ${fd} out of range`;
  const opened: number[] = [];
  try {
    const root = fs.openSync(`/proc/${pid}/root`, O_PATH | fs.constants.O_DIRECTORY);
    opened.push(root);
    const rootSt = fs.fstatSync(root, { bigint: true });
    const hostRootSt = fs.statSync(rootfs, { bigint: true });
    if (rootSt.dev !== hostRootSt.dev || rootSt.ino !== hostRootSt.ino) return `process ${pid} is not rooted in ${rootfs}`;
    const file = fs.openSync(`/proc/${pid}/fd/${fd}`, O_PATH);
    opened.push(file);
    const st = fs.fstatSync(file, { bigint: true });
    if (!st.isFile()) return `descriptor ${fd} is not a regular file`;
    if (st.ino !== ino) return `descriptor ${fd} is inode ${st.ino}, not ${ino}`;
    if (st.size !== 0n || st.nlink !== 1n) return `descriptor ${fd} is not a fresh file (size ${st.size}, links ${st.nlink})`;
    const rootMnt = mountIdOf(root);
    if (rootMnt === undefined || rootMnt !== mountIdOf(file)) return `descriptor ${fd} is not on the sandbox's root mount`;
    const out = fs.openSync(`/proc/self/fd/${file}`, fs.constants.O_WRONLY | fs.constants.O_NOCTTY);
    const again = fs.fstatSync(out, { bigint: true });
    if (again.ino !== st.ino || again.dev !== st.dev) {
      fs.closeSync(out);
      return `descriptor ${fd} changed while it was opened`;
    }
    return out;
  } catch (err) {
    return `cannot open descriptor ${fd} of process ${pid}: ${err instanceof Error ? err.message : String(err)}`;
  } finally {
    for (const h of opened) fs.closeSync(h);
  }
}

/** The mount id of one of this process's descriptors (`mnt_id` in /proc/self/fdinfo). */
function mountIdOf(fd: number): number | undefined {
  const m = /^mnt_id:\s*(\d+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return m ? Number(m[1]) : undefined;
}
