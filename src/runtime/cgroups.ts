/**
 * Host cgroup facts: where the hierarchies are mounted, whether the host is in
 * the "hybrid" layout crun refuses, and removing a sandbox's leftover cgroup
 * directories after the runtime deleted the container.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { unescapeMountPath } from './overlay.js';

export interface CgroupMount {
  /** Mount point, e.g. /sys/fs/cgroup/memory. */
  mountPoint: string;
  version: 1 | 2;
  /** v1 controllers (and name=... for named hierarchies); empty for v2. */
  controllers: string[];
}

/** Parse /proc/self/mountinfo text for cgroup and cgroup2 mounts. Pure. */
export function parseCgroupMounts(mountinfo: string): CgroupMount[] {
  const out: CgroupMount[] = [];
  for (const line of mountinfo.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    const fstype = right[0];
    const mountPoint = left[4];
    if (!mountPoint) continue;
    if (fstype === 'cgroup2') {
      out.push({ mountPoint: unescapeMountPath(mountPoint), version: 2, controllers: [] });
    } else if (fstype === 'cgroup') {
      const superOpts = (right[2] ?? '').split(',');
      const controllers = superOpts.filter((o) => o !== 'rw' && o !== 'ro' && !o.startsWith('release_agent=') && o !== 'clone_children' && o !== 'noprefix' && o !== 'xattr');
      out.push({ mountPoint: unescapeMountPath(mountPoint), version: 1, controllers });
    }
  }
  return out;
}

export async function cgroupMounts(): Promise<CgroupMount[]> {
  return parseCgroupMounts(await fsp.readFile('/proc/self/mountinfo', 'utf8'));
}

/** Controllers enabled on a cgroup2 mount that also has v1 hierarchies (crun's "hybrid mode" refusal). */
export async function hybridControllers(mounts?: CgroupMount[]): Promise<{ mountPoint: string; controllers: string[] } | null> {
  const ms = mounts ?? (await cgroupMounts());
  const v2 = ms.find((m) => m.version === 2);
  if (!v2 || !ms.some((m) => m.version === 1)) return null;
  let text = '';
  try {
    text = await fsp.readFile(path.join(v2.mountPoint, 'cgroup.controllers'), 'utf8');
  } catch {
    return null;
  }
  const controllers = text.split(/\s+/).filter(Boolean);
  return controllers.length > 0 ? { mountPoint: v2.mountPoint, controllers } : null;
}

/** Every directory a sandbox's cgroupsPath may have left, in every hierarchy. */
export async function sandboxCgroupDirs(cgroupsPath: string): Promise<string[]> {
  const rel = cgroupsPath.replace(/^\/+/, '');
  const dirs = new Set<string>();
  for (const m of await cgroupMounts()) dirs.add(path.join(m.mountPoint, rel));
  return [...dirs];
}

async function readProcs(dir: string): Promise<number[]> {
  const pids: number[] = [];
  let entries;
  try {
    entries = await fsp.readdir(dir, { withFileTypes: true });
  } catch {
    return pids;
  }
  try {
    for (const l of (await fsp.readFile(path.join(dir, 'cgroup.procs'), 'utf8')).split('\n')) {
      const n = Number(l);
      if (l !== '' && Number.isInteger(n) && n > 0) pids.push(n);
    }
  } catch {
    // gone meanwhile
  }
  for (const e of entries) if (e.isDirectory()) pids.push(...(await readProcs(path.join(dir, e.name))));
  return pids;
}

async function writeIfExists(file: string, value: string): Promise<boolean> {
  try {
    await fsp.writeFile(file, value);
    return true;
  } catch {
    return false;
  }
}

/**
 * Freeze or thaw every process of a sandbox through its v1 freezer cgroup,
 * and wait until the kernel reports the new state: a freeze can still be
 * FREEZING for tens of ms after the write (longer under a CPU quota), and a
 * caller told "paused" must be able to rely on nothing running. Writing the
 * file directly takes 1.5-4 ms where `crun pause` takes ~12 ms and may return
 * early. Returns false when there is no v1 freezer hierarchy (the caller then
 * asks the runtime). `mounts`: the cgroup mounts when the caller has them
 * (reading the mount table costs more than the freeze with many sandboxes).
 */
export async function setFreezerState(
  cgroupsPath: string,
  state: 'FROZEN' | 'THAWED',
  timeoutMs = 5000,
  mounts?: readonly CgroupMount[],
): Promise<boolean> {
  const freezer = (mounts ?? (await cgroupMounts())).find((m) => m.version === 1 && m.controllers.includes('freezer'));
  if (!freezer) return false;
  const file = path.join(freezer.mountPoint, cgroupsPath.replace(/^\/+/, ''), 'freezer.state');
  await fsp.writeFile(file, state);
  const deadline = Date.now() + timeoutMs;
  for (let wait = 1; ; wait = Math.min(wait * 2, 20)) {
    const now = (await fsp.readFile(file, 'utf8')).trim();
    if (now === state) return true;
    if (Date.now() > deadline) throw new Error(`the freezer of ${cgroupsPath} is still ${now} after ${timeoutMs} ms`);
    // FREEZING can stall while a task is in an uninterruptible sleep; writing again retries it.
    if (state === 'FROZEN') await fsp.writeFile(file, state);
    await new Promise((r) => setTimeout(r, wait));
  }
}

/** The freezer state of a sandbox's cgroup, or undefined without a v1 freezer (or a cgroup). */
export async function freezerState(cgroupsPath: string): Promise<string | undefined> {
  const freezer = (await cgroupMounts()).find((m) => m.version === 1 && m.controllers.includes('freezer'));
  if (!freezer) return undefined;
  try {
    return (await fsp.readFile(path.join(freezer.mountPoint, cgroupsPath.replace(/^\/+/, ''), 'freezer.state'), 'utf8')).trim();
  } catch {
    return undefined;
  }
}

/**
 * SIGKILL every process still in the sandbox's cgroups — what is left when
 * the runtime lost track of a container (killed mid-create, daemon crash).
 * Freezes first where a freezer hierarchy exists so nothing forks meanwhile.
 * Resolves once the cgroups are empty or `timeoutMs` passed; returns the pids
 * still there.
 */
export async function killCgroupProcs(cgroupsPath: string, timeoutMs = 2000): Promise<number[]> {
  const dirs = await sandboxCgroupDirs(cgroupsPath);
  const all = async () => [...new Set((await Promise.all(dirs.map(readProcs))).flat())];
  let pids = await all();
  if (pids.length === 0) return [];
  const freezer = dirs.find((d) => d.includes('/freezer/'));
  const frozen = freezer ? await writeIfExists(path.join(freezer, 'freezer.state'), 'FROZEN') : false;
  const deadline = Date.now() + timeoutMs;
  try {
    while (pids.length > 0) {
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      if (frozen && freezer) await writeIfExists(path.join(freezer, 'freezer.state'), 'THAWED');
      await new Promise((r) => setTimeout(r, 5));
      pids = await all();
      if (Date.now() > deadline) break;
    }
  } finally {
    if (frozen && freezer) await writeIfExists(path.join(freezer, 'freezer.state'), 'THAWED');
  }
  return pids;
}

/**
 * rmdir the sandbox's cgroup directories (children first). A cgroup with no
 * tasks can still be EBUSY for a moment after its last process died: retry.
 * Returns the ones that could not be removed.
 */
export async function removeCgroupDirs(cgroupsPath: string, attempts = 8): Promise<string[]> {
  forgetOomFd(cgroupsPath);
  const left: string[] = [];
  for (const dir of await sandboxCgroupDirs(cgroupsPath)) {
    if (!(await removeTree(dir, attempts))) left.push(dir);
  }
  return left;
}

async function removeTree(dir: string, attempts: number): Promise<boolean> {
  let entries;
  try {
    entries = await fsp.readdir(dir, { withFileTypes: true });
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT';
  }
  let ok = true;
  for (const e of entries) if (e.isDirectory()) ok = (await removeTree(path.join(dir, e.name), attempts)) && ok;
  for (let i = 0; i < attempts; i++) {
    try {
      await fsp.rmdir(dir);
      return ok;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return ok;
      if (code !== 'EBUSY' && code !== 'ENOTEMPTY') return false;
      await new Promise((r) => setTimeout(r, 10 * (i + 1)));
    }
  }
  return false;
}

let memoryMount: Promise<string | null> | undefined;

/**
 * How many times the kernel's OOM killer fired inside a sandbox's memory cgroup
 * (cgroup v1 `memory.oom_control`, field oom_kill); 0 when unknown.
 */
export async function readOomKills(cgroupsPath: string): Promise<number> {
  // Read on every command: the mount table is looked up once, not per call.
  memoryMount ??= cgroupMounts().then((ms) => ms.find((m) => m.controllers.includes('memory'))?.mountPoint ?? null);
  const mountPoint = await memoryMount;
  if (!mountPoint) return 0;
  const text = readOomControl(cgroupsPath, path.join(mountPoint, cgroupsPath.replace(/^\/+/, ''), 'memory.oom_control'));
  const m = text === undefined ? null : /^oom_kill (\d+)$/m.exec(text);
  return m ? Number(m[1]) : 0;
}

/**
 * memory.oom_control of a sandbox, read with one pread on a descriptor kept open per sandbox (cgroupfs
 * regenerates the file on every read from offset 0). Opening, reading to the end and closing it took
 * four system calls per command, each expensive on a paravirtualised VM. Synchronous on purpose: a
 * cgroupfs file is generated in memory and never blocks, while fs/promises costs thread-pool round trips.
 * Descriptors are closed when the sandbox's cgroups are removed (removeCgroupDirs), on any read error
 * (a cgroup made again under the same path), and beyond OOM_FDS_MAX, oldest first.
 */
function readOomControl(cgroupsPath: string, file: string): string | undefined {
  const cached = oomFds.get(cgroupsPath);
  if (cached !== undefined) {
    try {
      const n = fs.readSync(cached, oomScratch, 0, oomScratch.length, 0);
      return oomScratch.toString('latin1', 0, n);
    } catch {
      forgetOomFd(cgroupsPath);
    }
  }
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch {
    return undefined;
  }
  try {
    const n = fs.readSync(fd, oomScratch, 0, oomScratch.length, 0);
    if (oomFds.size >= OOM_FDS_MAX) forgetOomFd(oomFds.keys().next().value as string);
    oomFds.set(cgroupsPath, fd);
    return oomScratch.toString('latin1', 0, n);
  } catch {
    fs.closeSync(fd);
    return undefined;
  }
}

/** Open memory.oom_control descriptors by cgroupsPath, oldest first (see readOomControl). */
const oomFds = new Map<string, number>();
const OOM_FDS_MAX = 256;
/** memory.oom_control is three short lines. */
const oomScratch = Buffer.alloc(4096);

function forgetOomFd(cgroupsPath: string): void {
  const fd = oomFds.get(cgroupsPath);
  if (fd === undefined) return;
  oomFds.delete(cgroupsPath);
  try {
    fs.closeSync(fd);
  } catch {
    /* already closed */
  }
}

/** New values for a sandbox's cgroup v1 limit files; absent = unchanged. */
export interface CgroupV1Limits {
  memoryBytes?: number;
  /** Also set memory.memsw (memory + swap) to memoryBytes, as create does, so no swap is added. */
  swapAccounting: boolean;
  cpuQuotaUs?: number;
  pids?: number;
}

let v1Mounts: Promise<Map<string, string>> | undefined;

/** Mount point of each v1 controller (memory, cpu, pids, ...), looked up once per process. */
function v1ControllerMounts(): Promise<Map<string, string>> {
  v1Mounts ??= cgroupMounts().then((ms) => {
    const byController = new Map<string, string>();
    for (const m of ms) if (m.version === 1) for (const c of m.controllers) if (!byController.has(c)) byController.set(c, m.mountPoint);
    return byController;
  });
  return v1Mounts;
}

/**
 * Write new limits straight into a running sandbox's cgroup v1 files: a few
 * small writes instead of a ~7 ms runtime process. Returns false, having
 * written nothing, when a needed controller has no v1 hierarchy (a cgroup v2
 * host): the caller then asks the runtime (`crun update`). Throws when the
 * kernel refuses a value (e.g. a memory limit below what is already in use).
 */
export async function writeCgroupV1Limits(cgroupsPath: string, limits: CgroupV1Limits): Promise<boolean> {
  const mounts = await v1ControllerMounts();
  const rel = cgroupsPath.replace(/^\/+/, '');
  const dir = (controller: string) => {
    const m = mounts.get(controller);
    return m === undefined ? undefined : path.join(m, rel);
  };
  const memDir = limits.memoryBytes !== undefined ? dir('memory') : null;
  const cpuDir = limits.cpuQuotaUs !== undefined ? dir('cpu') : null;
  const pidsDir = limits.pids !== undefined ? dir('pids') : null;
  if (memDir === undefined || cpuDir === undefined || pidsDir === undefined) return false;

  if (memDir && limits.memoryBytes !== undefined) {
    const value = String(limits.memoryBytes);
    const files = ['memory.limit_in_bytes'];
    if (limits.swapAccounting) {
      // The kernel keeps memsw >= limit at every step: raise memsw first, lower it last.
      const current = Number((await fsp.readFile(path.join(memDir, 'memory.limit_in_bytes'), 'utf8')).trim());
      if (limits.memoryBytes > current) files.unshift('memory.memsw.limit_in_bytes');
      else files.push('memory.memsw.limit_in_bytes');
    }
    for (const f of files) await fsp.writeFile(path.join(memDir, f), value);
  }
  if (cpuDir && limits.cpuQuotaUs !== undefined) await fsp.writeFile(path.join(cpuDir, 'cpu.cfs_quota_us'), String(limits.cpuQuotaUs));
  if (pidsDir && limits.pids !== undefined) await fsp.writeFile(path.join(pidsDir, 'pids.max'), String(limits.pids));
  return true;
}

let controllerMounts: Promise<Map<string, string>> | undefined;

/** Mount point of each v1 controller (cpu and cpuacct often share one), looked up once. */
function controllers(): Promise<Map<string, string>> {
  controllerMounts ??= cgroupMounts().then((ms) => {
    const m = new Map<string, string>();
    for (const mount of ms) if (mount.version === 1) for (const c of mount.controllers) if (!m.has(c)) m.set(c, mount.mountPoint);
    return m;
  });
  return controllerMounts;
}

/** A cgroup v1 counter file as a number; 0 when missing, "max" or unreadable. */
function readNumber(mount: string | undefined, cgroupsPath: string, file: string): number {
  if (!mount) return 0;
  try {
    // Synchronous: cgroupfs files are generated in memory and never block (see readOomKills).
    const text = fs.readFileSync(path.join(mount, cgroupsPath.replace(/^\/+/, ''), file), 'utf8').trim();
    const n = Number(text);
    return Number.isFinite(n) ? n : 0;
  } catch {
    return 0;
  }
}

/** A sandbox's cgroup v1 counters: CPU time, memory (now, peak, limit), pids (now, limit), CPU quota. */
export async function readCgroupStats(cgroupsPath: string): Promise<{
  cpuUsageNs: number;
  cpuLimitCores: number;
  memoryBytes: number;
  memoryPeakBytes: number;
  memoryLimitBytes: number;
  pids: number;
  pidsLimit: number;
}> {
  const m = await controllers();
  const quota = readNumber(m.get('cpu'), cgroupsPath, 'cpu.cfs_quota_us');
  const period = readNumber(m.get('cpu'), cgroupsPath, 'cpu.cfs_period_us');
  return {
    cpuUsageNs: readNumber(m.get('cpuacct'), cgroupsPath, 'cpuacct.usage'),
    cpuLimitCores: quota > 0 && period > 0 ? quota / period : 0,
    memoryBytes: readNumber(m.get('memory'), cgroupsPath, 'memory.usage_in_bytes'),
    memoryPeakBytes: readNumber(m.get('memory'), cgroupsPath, 'memory.max_usage_in_bytes'),
    memoryLimitBytes: readNumber(m.get('memory'), cgroupsPath, 'memory.limit_in_bytes'),
    pids: readNumber(m.get('pids'), cgroupsPath, 'pids.current'),
    pidsLimit: readNumber(m.get('pids'), cgroupsPath, 'pids.max'),
  };
}
