/**
 * Where a sandbox's files live on the host, and the mount table checks that
 * keep cleanup from deleting through a mount. The mounts themselves are made
 * by native/capsule-mount (see mounts.ts); `runTool` runs other host tools.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { RuntimeError } from '../errors/index.js';

export interface SandboxLayout {
  dir: string;
  /** Sparse ext4 image: the sandbox's disk quota. */
  diskImage: string;
  /** Where that image is mounted; holds the overlay's upper and work dirs and the agent. */
  disk: string;
  /** Directory bind-mounted read-only at /.capsule: a copy of the agent on the sandbox's own disk. */
  agentDir: string;
  /** Overlay of the template (through the `lower` symlink) and disk/upper: the container's root. */
  rootfs: string;
  bundle: string;
}

export function sandboxLayout(sandboxDir: string): SandboxLayout {
  return {
    dir: sandboxDir,
    diskImage: path.join(sandboxDir, 'disk.img'),
    disk: path.join(sandboxDir, 'disk'),
    agentDir: path.join(sandboxDir, 'disk', 'agent'),
    rootfs: path.join(sandboxDir, 'rootfs'),
    bundle: path.join(sandboxDir, 'bundle'),
  };
}

/**
 * Run a host tool; resolves with its exit code (or killing signal) and stderr,
 * never rejects for a non-zero exit. `missingHint` says what to do when the tool
 * cannot be started at all.
 */
export function runTool(
  cmd: string,
  args: string[],
  timeoutMs = 15_000,
  missingHint = 'apt-get install mount',
): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new RuntimeError(`cannot run ${cmd}: ${e.message}; ${missingHint}`, undefined, { cause: e }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stderr: Buffer.concat(err).toString('utf8').trim() });
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
