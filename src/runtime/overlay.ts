/**
 * The sandbox's writable layer: `sandboxDir/{upper,work,rootfs}` with an
 * overlay of the template (lower, read-only) and upper mounted on rootfs.
 * Node has no mount(2), so this runs `mount`/`umount`.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { RuntimeError } from '../errors/index.js';

export interface SandboxLayout {
  dir: string;
  upper: string;
  work: string;
  rootfs: string;
  bundle: string;
}

export function sandboxLayout(sandboxDir: string): SandboxLayout {
  return {
    dir: sandboxDir,
    upper: path.join(sandboxDir, 'upper'),
    work: path.join(sandboxDir, 'work'),
    rootfs: path.join(sandboxDir, 'rootfs'),
    bundle: path.join(sandboxDir, 'bundle'),
  };
}

/** Run a host tool; resolves with its exit code and stderr, never rejects for a non-zero exit. */
export function runTool(
  cmd: string,
  args: string[],
  timeoutMs = 15_000,
): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new RuntimeError(`cannot run ${cmd}: ${e.message}; apt-get install mount`, undefined, { cause: e }));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr: Buffer.concat(err).toString('utf8').trim() });
    });
  });
}

/** Octal-escaped paths in /proc/self/mountinfo ("\040" for a space). */
export function unescapeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Mount points (field 5 of mountinfo) of this process's mount namespace. */
export async function readMountPoints(): Promise<string[]> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length > 4 && f[4]) out.push(unescapeMountPath(f[4]));
  }
  return out;
}

export async function isMounted(p: string): Promise<boolean> {
  return (await readMountPoints()).includes(p);
}

/**
 * Make upper/work/rootfs and mount the overlay. The upper and work dirs (and
 * with them the container's `/`) are owned by the mapped root so container
 * root can write anywhere it could in the template.
 */
export async function mountOverlay(layout: SandboxLayout, lowerdir: string, owner: number): Promise<void> {
  if (lowerdir.includes(',') || lowerdir.includes(':')) {
    throw new RuntimeError(`template rootfs path ${lowerdir} contains ',' or ':', which overlayfs cannot take: rename the data dir`);
  }
  try {
    await fsp.access(lowerdir);
  } catch {
    throw new RuntimeError(`template rootfs ${lowerdir} does not exist: build the template first (capsule template build)`);
  }
  await fsp.mkdir(layout.dir, { recursive: true, mode: 0o711 });
  for (const d of [layout.upper, layout.work, layout.rootfs]) await fsp.mkdir(d, { mode: 0o755 });
  // The upper's root becomes the merged root's attributes: match the lower's mode, mapped-root owned.
  const lowerMode = (await fsp.stat(lowerdir)).mode & 0o7777;
  await fsp.chmod(layout.upper, lowerMode);
  await fsp.chown(layout.upper, owner, owner);
  await fsp.chown(layout.work, owner, owner);
  const opts = `lowerdir=${lowerdir},upperdir=${layout.upper},workdir=${layout.work}`;
  const r = await runTool('mount', ['-t', 'overlay', 'overlay', '-o', opts, layout.rootfs]);
  if (r.code !== 0) {
    throw new RuntimeError(
      `overlay mount on ${layout.rootfs} failed: ${r.stderr || `exit ${r.code}`}; check that overlayfs is available (modprobe overlay) and the daemon runs as root`,
      { rootfs: layout.rootfs },
    );
  }
}

/** Unmount if mounted; lazy-unmount when busy. Never throws for "not mounted". */
export async function unmountOverlay(rootfs: string): Promise<void> {
  if (!(await isMounted(rootfs))) return;
  const r = await runTool('umount', [rootfs]);
  if (r.code === 0 || !(await isMounted(rootfs))) return;
  const lazy = await runTool('umount', ['-l', rootfs]);
  if (lazy.code !== 0 && (await isMounted(rootfs))) {
    throw new RuntimeError(`cannot unmount ${rootfs}: ${lazy.stderr || r.stderr}; find users with fuser -vm ${rootfs}`);
  }
}

/** Remove the sandbox directory tree. Refuses while something is still mounted below it. */
export async function removeSandboxDir(dir: string): Promise<void> {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  const mounts = (await readMountPoints()).filter((m) => m === dir || m.startsWith(prefix));
  if (mounts.length > 0) {
    throw new RuntimeError(`refusing to remove ${dir}: still mounted at ${mounts.join(', ')}; run umount -l on them`);
  }
  await fsp.rm(dir, { recursive: true, force: true });
}

export function existsSync(p: string): boolean {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}
