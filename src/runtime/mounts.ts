/**
 * A sandbox's host mounts, made and removed by the native helper
 * native/capsule-mount (one short process each way; see its header comment
 * for the layout): a sparse ext4 image of `diskMb` on a loop device, which
 * bounds the sandbox's writes, and the overlay of the template on top of it.
 * This module turns the helper's exit codes into RuntimeErrors with hints.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { RuntimeError } from '../errors/index.js';
import { runTool, type SandboxLayout } from './overlay.js';
import type { Launcher } from './launcher.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** Built by scripts/build-native.mjs: dist/src/runtime/mounts.js -> dist/native/capsule-mount. */
export const MOUNT_HELPER_PATH = path.resolve(here, '..', '..', 'native', 'capsule-mount');

/** Exit codes of capsule-mount, with what to do about each. */
const HINTS: Record<number, string> = {
  2: 'the daemon called capsule-mount wrongly; this is a bug',
  3: 'build the template first (capsule template build)',
  4: 'check that the data dir is writable by root and has free space',
  5: 'check that e2fsprogs is installed (apt-get install e2fsprogs) and the data dir has free space',
  6: 'check `capsule doctor` (loop devices: modprobe loop; ls /dev/loop-control)',
  7: 'check that the kernel has ext4 and that `capsule doctor` passes',
  8: 'check the data dir filesystem (free space, permissions)',
  9: 'check that overlayfs is available (modprobe overlay) and the daemon runs as root',
  10: 'find what keeps the sandbox mounts busy with fuser -vm on them',
};

export interface MountHelperOptions {
  /** The helper binary; default dist/native/capsule-mount. */
  helper?: string;
  timeoutMs?: number;
  /** Run the helper through capsule-launcher instead of forking the daemon. */
  launcher?: Launcher;
}

interface HelperResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

async function runHelper(helper: string, args: string[], timeoutMs: number, launcher?: Launcher): Promise<HelperResult> {
  if (launcher) {
    try {
      const r = await launcher.run([helper, ...args], { timeoutMs });
      return { code: r.code, signal: r.signal, stderr: r.stderr.trim().slice(0, 2000) };
    } catch (e) {
      const hint = /ENOENT/.test((e as Error).message) ? ': run `npm run build` (needs musl-tools or gcc)' : '';
      throw new RuntimeError(`cannot run the mount helper ${helper}: ${(e as Error).message}${hint}`, undefined, { cause: e });
    }
  }
  // mke2fs on a large image is the slow part; a stuck helper must not hang a create forever.
  const r = await runTool(helper, args, timeoutMs, 'run `npm run build` (needs musl-tools or gcc)');
  return { ...r, stderr: r.stderr.slice(0, 2000) };
}

function helperError(what: string, r: HelperResult, details: Record<string, unknown>): RuntimeError {
  const why = r.stderr.replace(/^capsule-mount: /, '') || (r.signal ? `killed by ${r.signal} (timed out?)` : `exit ${r.code}`);
  const hint = r.code !== null ? HINTS[r.code] : undefined;
  return new RuntimeError(`${what}: ${why}${hint ? `; ${hint}` : ''}`, { ...details, exitCode: r.code });
}

export interface DiskSetup {
  layout: SandboxLayout;
  /** Read-only layers, topmost first (the first one's root mode becomes the sandbox's / mode). */
  layers: readonly string[];
  diskMb: number;
  /** Host uid (and gid) of the sandbox's root: owner of the writable layer. */
  owner: number;
  /** Host agent binary, copied onto the sandbox's disk (layout.agentDir). */
  agentBinary: string;
  /**
   * Loop device with O_DIRECT on its image: no second copy of the sandbox's
   * files in the page cache, but every writeback (and the one at unmount) then
   * waits for the host disk. Off by default (see OciRuntimeDriverOptions).
   */
  directIo: boolean;
  /** Where empty images are cached per size; absent: mke2fs for every sandbox. */
  imageCache?: string;
}

/** Make the sandbox dir (must not exist), its disk and its overlay. On failure no mount is left; files may be. */
export async function setupSandboxMounts(s: DiskSetup, opts: MountHelperOptions = {}): Promise<void> {
  const helper = opts.helper ?? MOUNT_HELPER_PATH;
  const [top, ...below] = s.layers;
  if (top === undefined) throw new RuntimeError(`no layers given for ${s.layout.dir}`);
  const args = ['setup', s.layout.dir, top, String(s.diskMb), String(s.owner), s.agentBinary];
  for (const l of below) args.push('--lower', l);
  if (s.directIo) args.push('--dio');
  if (s.imageCache) args.push('--image-cache', s.imageCache);
  const r = await runHelper(helper, args, opts.timeoutMs ?? 30_000, opts.launcher);
  if (r.code !== 0) throw helperError(`setting up the disk and overlay of ${s.layout.dir} failed`, r, { dir: s.layout.dir });
}

/** Unmount the overlay, then the disk (lazily when busy). Nothing mounted, or no dir at all, is success. */
export async function teardownSandboxMounts(dir: string, opts: MountHelperOptions = {}): Promise<void> {
  const r = await runHelper(opts.helper ?? MOUNT_HELPER_PATH, ['teardown', dir], opts.timeoutMs ?? 30_000, opts.launcher);
  if (r.code !== 0) throw helperError(`unmounting ${dir} failed`, r, { dir });
}

/**
 * A stopped sandbox's disk: unmount the overlay and the disk without ever
 * detaching lazily (retrying while busy), and fsync the image, so the next
 * start (also after a host reboot) finds every write.
 */
export async function unmountKeepingDisk(dir: string, opts: MountHelperOptions = {}): Promise<void> {
  const r = await runHelper(opts.helper ?? MOUNT_HELPER_PATH, ['unmount', dir], opts.timeoutMs ?? 30_000, opts.launcher);
  if (r.code !== 0) throw helperError(`unmounting the kept disk of ${dir} failed`, r, { dir });
}

/**
 * Mount a stopped sandbox's kept disk and its overlay again (a new loop
 * device, the current agent copied onto the disk). On failure no mount is left.
 */
export async function remountSandbox(s: { dir: string; agentBinary: string; directIo: boolean }, opts: MountHelperOptions = {}): Promise<void> {
  const args = ['mount', s.dir, s.agentBinary];
  if (s.directIo) args.push('--dio');
  const r = await runHelper(opts.helper ?? MOUNT_HELPER_PATH, args, opts.timeoutMs ?? 30_000, opts.launcher);
  if (r.code !== 0) throw helperError(`mounting the kept disk of ${s.dir} failed`, r, { dir: s.dir });
}

/**
 * A named volume's disk, ready to be bound into sandboxes: `<dir>/disk.img`
 * (made on first use) mounted at `<dir>/mnt`, whose `data/` (owned by
 * `owner`) is what a sandbox sees. Mounted already: nothing happens.
 */
export async function mountVolume(s: { dir: string; diskMb: number; owner: number; imageCache?: string }, opts: MountHelperOptions = {}): Promise<void> {
  const args = ['volume-mount', s.dir, String(s.diskMb), String(s.owner)];
  if (s.imageCache) args.push('--image-cache', s.imageCache);
  const r = await runHelper(opts.helper ?? MOUNT_HELPER_PATH, args, opts.timeoutMs ?? 30_000, opts.launcher);
  if (r.code !== 0) throw helperError(`mounting the volume disk ${s.dir} failed`, r, { dir: s.dir });
}

/** Unmount a volume's disk (never lazily) and fsync its image; not mounted is success. */
export async function unmountVolume(dir: string, opts: MountHelperOptions = {}): Promise<void> {
  const r = await runHelper(opts.helper ?? MOUNT_HELPER_PATH, ['volume-unmount', dir], opts.timeoutMs ?? 30_000, opts.launcher);
  if (r.code !== 0) throw helperError(`unmounting the volume disk ${dir} failed`, r, { dir });
}

/** True when the helper has been built (doctor and startup checks). */
export function mountHelperExists(helper = MOUNT_HELPER_PATH): boolean {
  try {
    fs.accessSync(helper, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}
