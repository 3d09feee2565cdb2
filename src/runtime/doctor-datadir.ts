/**
 * Whether the sandboxes' mapped root can reach the data directory. The runtime sets
 * up each sandbox's mounts (e.g. making `<data-dir>/sandboxes/<id>/rootfs` private)
 * as that unprivileged host uid, so every directory on the way must be searchable by
 * it. A data dir under a 0700 home (`--data-dir ~/capsule-data` as root) is not, and
 * every create then failed deep inside crun with "Permission denied"; this check says
 * which directory blocks and what to run instead.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { DoctorCheck } from './doctor.js';

export interface Blocker {
  dir: string;
  mode: number;
  uid: number;
  gid: number;
}

/**
 * The existing directories from / down to `target` that uid/gid cannot search (x),
 * judged the way the kernel does for a process without capabilities or supplementary
 * groups: the owner bits if it owns the directory, else the group bits if its group
 * matches, else the other bits. ACLs are not read; they could only grant more.
 * Components that do not exist yet are skipped (the daemon makes them, and checks again at start).
 */
export function untraversable(target: string, uid: number, gid: number): Blocker[] {
  const out: Blocker[] = [];
  let dir = path.resolve(target);
  const chain: string[] = [];
  for (;;) {
    chain.unshift(dir);
    const up = path.dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  for (const d of chain) {
    let st: fs.Stats;
    try {
      // stat, not lstat: the kernel follows a symlinked component, and what it lands on is what must be searchable.
      st = fs.statSync(d);
    } catch {
      break;
    }
    if (!st.isDirectory()) break;
    const bit = st.uid === uid ? 0o100 : st.gid === gid ? 0o010 : 0o001;
    if ((st.mode & bit) === 0) out.push({ dir: d, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid });
  }
  return out;
}

/** The fix for one blocker: the bit for the class the mapped ids fall in. */
function chmodFor(b: Blocker, uid: number, gid: number): string {
  const who = b.uid === uid ? 'u' : b.gid === gid ? 'g' : 'o';
  return `chmod ${who}+x ${b.dir}`;
}

/**
 * The data-dir check for `capsule doctor` and the daemon's start. `idBase` is the
 * host uid and gid that sandbox root maps to (DaemonConfig.idMapBase).
 */
export function checkDataDir(dataDir: string, idBase: number): DoctorCheck {
  const name = 'data dir';
  const abs = path.resolve(dataDir);
  // The daemon itself makes the data dir and the parts below it that sandboxes reach searchable
  // (src/daemon.ts); the directories above it are the operator's, so only those are judged here.
  const blockers = untraversable(path.dirname(abs), idBase, idBase);
  if (blockers.length === 0) {
    const made = fs.existsSync(abs) ? '' : ' (not made yet; its parents are fine)';
    return { name, ok: true, message: `${abs} is reachable by sandbox root (host uid ${idBase})${made}` };
  }
  const list = blockers.map((b) => `${b.dir} (mode ${b.mode.toString(8).padStart(4, '0')}, owner ${b.uid}:${b.gid})`).join(', ');
  return {
    name,
    ok: false,
    message: `sandbox root (host uid/gid ${idBase}) cannot reach ${abs}: it may not search ${list}, so every sandbox would fail to start`,
    fix: `${blockers.map((b) => chmodFor(b, idBase, idBase)).join(' && ')} (lets others pass through, not list), or use a data dir outside it, e.g. --data-dir /var/lib/capsule`,
  };
}
