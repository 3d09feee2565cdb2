/**
 * Small filesystem helpers for template builds: safe removal of a build tree
 * that may still have mounts below it (debootstrap mounts /proc and /sys in
 * its target, and a killed debootstrap can leave them behind; a recursive
 * delete must never walk into a live /sys).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { RuntimeError } from '../errors/index.js';

const execFileP = promisify(execFile);

/** Decode the octal escapes (\040 for a space, ...) used in /proc/self/mountinfo. */
function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Mount points at or below `dir`, deepest first. */
export async function mountsBelow(dir: string): Promise<string[]> {
  let text: string;
  try {
    text = await fs.readFile('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const root = path.resolve(dir);
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    const mp = fields[4];
    if (!mp) continue;
    const p = unescapeMountPath(mp);
    if (p === root || p.startsWith(root + '/')) out.push(p);
  }
  return out.sort((a, b) => b.length - a.length);
}

/** Lazily unmount everything mounted at or below `dir`. Throws if something stays mounted. */
export async function unmountBelow(dir: string): Promise<void> {
  const mps = await mountsBelow(dir);
  for (const mp of mps) {
    try {
      await execFileP('umount', ['-l', mp]);
    } catch {
      // checked below
    }
  }
  const left = await mountsBelow(dir);
  if (left.length > 0) {
    throw new RuntimeError(
      `cannot remove ${dir}: still mounted at ${left.join(', ')}; unmount them with \`umount -l <path>\` and retry`,
    );
  }
}

/** Remove a build tree, unmounting anything below it first. Missing trees are fine. */
export async function removeTree(dir: string): Promise<void> {
  try {
    await fs.lstat(dir);
  } catch {
    return;
  }
  await unmountBelow(dir);
  await fs.rm(dir, { recursive: true, force: true, maxRetries: 3 });
}

export async function exists(p: string): Promise<boolean> {
  try {
    await fs.lstat(p);
    return true;
  } catch {
    return false;
  }
}
