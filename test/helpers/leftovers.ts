/**
 * Host-side traces a sandbox can leave behind, for tests that end sandboxes in
 * odd ways (kills during a create, restarts, expiries) and must prove nothing
 * leaked: mounts, cgroup dirs, processes, loop devices, files, runtime state
 * and database rows.
 */
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';

/** What is left of sandbox `id` of the daemon whose data dir is `dataDir` (empty: nothing). */
export function leftovers(id: string, dataDir: string): string[] {
  const found: string[] = [];
  if (fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(id)) found.push('mount');
  for (const ctrl of fs.readdirSync('/sys/fs/cgroup')) {
    if (fs.existsSync(`/sys/fs/cgroup/${ctrl}/capsule/${id}`)) found.push(`cgroup:${ctrl}`);
  }
  if (fs.existsSync(`${dataDir}/sandboxes/${id}`)) found.push('sandbox dir');
  if (fs.existsSync(`${dataDir}/run/${id}.sock`)) found.push('socket');
  if (fs.existsSync(`${dataDir}/runtime/${id}`)) found.push('runtime state');
  if (fs.existsSync(`${dataDir}/gvisor/sock/${id}`)) found.push('gvisor socket dir');
  // A microVM's dir: its disk, QEMU's pid file and serial socket, the agent relay's socket.
  if (fs.existsSync(`${dataDir}/microvm/sb/${id}`)) found.push('microvm dir');
  // runsc keeps "<sandbox>_sandbox:<container>.state" (and .lock) files per container.
  const gvisorState = fs.existsSync(`${dataDir}/gvisor/state`) ? fs.readdirSync(`${dataDir}/gvisor/state`) : [];
  if (gvisorState.some((f) => f.startsWith(`${id}_sandbox:`))) found.push('gvisor state');
  // Networking: the relay's control socket and pid file, and the relay itself (its netns is the sandbox's own and goes with it).
  for (const f of [`${id}.sock`, `${id}.pid`]) if (fs.existsSync(`${dataDir}/run/net/${f}`)) found.push(`network file ${f}`);
  for (const pid of netRelays(id)) found.push(`network relay ${pid}`);
  for (const dev of fs.readdirSync('/sys/block').filter((b) => b.startsWith('loop'))) {
    let backing = '';
    try {
      backing = fs.readFileSync(`/sys/block/${dev}/loop/backing_file`, 'utf8');
    } catch {
      continue; // a free loop device
    }
    if (backing.includes(`/${id}/`)) found.push(`loop device ${dev}`);
  }
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let cg = '';
    try {
      cg = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    if (cg.includes(`/capsule/${id}\n`) || cg.includes(`/capsule/${id}/`)) found.push(`process ${pid}`);
    else if (readCmdline(pid).includes(`/microvm/sb/${id}/`)) found.push(`QEMU process ${pid}`);
  }
  return found;
}

function readCmdline(pid: string): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return '';
  }
}

/** Pids of live network relays (native/capsule-netrelay.c) of sandbox `id`, or of every sandbox when id is omitted. */
export function netRelays(id?: string): number[] {
  const out: number[] = [];
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let cmd: string[];
    let stat = '';
    try {
      cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      continue;
    }
    if (!cmd[0]?.endsWith('capsule-netrelay') || /\) Z /.test(stat)) continue;
    if (id === undefined || cmd[cmd.indexOf('--id') + 1] === id) out.push(Number(pid));
  }
  return out;
}

/** leftovers() once the kernel had a moment to detach loop devices and reap (it does both in work items). */
export async function settledLeftovers(id: string, dataDir: string): Promise<string[]> {
  let left = leftovers(id, dataDir);
  for (let i = 0; i < 60 && left.length > 0; i++) {
    await new Promise((r) => setTimeout(r, 25));
    left = leftovers(id, dataDir);
  }
  return left;
}

/** The sandbox's row and its process rows, read from the daemon's SQLite file (read-only). */
export function sandboxRows(dataDir: string, id: string): { state: string | undefined; endReason: string | null; processRows: number } {
  const db = new Database(path.join(dataDir, 'capsule.db'), { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare('SELECT state, end_reason FROM sandboxes WHERE id = ?').get(id) as { state: string; end_reason: string | null } | undefined;
    const procs = db.prepare('SELECT COUNT(*) AS n FROM processes WHERE sandbox_id = ?').get(id) as { n: number };
    return { state: row?.state, endReason: row?.end_reason ?? null, processRows: procs.n };
  } finally {
    db.close();
  }
}
