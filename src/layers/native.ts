/**
 * The daemon's side of native/capsule-layer (whiteouts and opaque markers in
 * layer trees) and of `cp -a` (capturing a build step's overlay upper dir).
 * Layer work happens at build and import time, not on a sandbox's hot path, so
 * these are plain child processes.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { RuntimeError } from '../errors/index.js';

const execFileP = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
/** Built by scripts/build-native.mjs: dist/src/layers/native.js -> dist/native/capsule-layer. */
export const LAYER_HELPER_PATH = path.resolve(here, '..', '..', 'native', 'capsule-layer');

/** Paths per helper call: well under the kernel's argument limit. */
const BATCH = 500;

async function helper(verb: 'whiteout' | 'opaque', root: string, owner: number, rels: string[]): Promise<void> {
  for (let i = 0; i < rels.length; i += BATCH) {
    try {
      await execFileP(LAYER_HELPER_PATH, [verb, root, String(owner), ...rels.slice(i, i + BATCH).map((r) => r || '/')], { timeout: 60_000 });
    } catch (e) {
      const err = e as { stderr?: string; code?: unknown; message: string };
      const why = (err.stderr ?? '').trim() || err.message;
      const hint = err.code === 'ENOENT' ? '; run `npm run build`' : '';
      throw new RuntimeError(`could not write overlay ${verb} markers in ${root}: ${why}${hint}`, { root }, { cause: e });
    }
  }
}

/** An overlay whiteout (0/0 character device) at each relative path. */
export function makeWhiteouts(root: string, owner: number, rels: string[]): Promise<void> {
  return helper('whiteout', root, owner, rels);
}

/** Mark each relative directory opaque ("" is the root). */
export function markOpaque(root: string, owner: number, rels: string[]): Promise<void> {
  return helper('opaque', root, owner, rels);
}

/**
 * Copy an overlay upper dir into a layer draft with everything that makes it a
 * diff: owners, modes, times, hard links, whiteout devices, and xattrs (the
 * trusted.overlay.* markers). GNU cp -a does all of it as root.
 */
export async function copyTree(from: string, to: string, signal?: AbortSignal): Promise<void> {
  try {
    await execFileP('cp', ['-a', '--no-dereference', '--preserve=all', '-T', from, to], { timeout: 30 * 60_000, ...(signal ? { signal } : {}) });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new RuntimeError(`could not copy a build step's files into the layer store: ${(err.stderr ?? '').trim() || err.message}`, { from }, { cause: e });
  }
}
