/**
 * Files written through E2B's API belong to the user who wrote them, as envd makes them. The agent
 * writes as root, so for another user the adapter first asks, as that user, whether the user may
 * write there (`test -w` on the file, or on the directory that will hold what is new; envd's own
 * write would fail the same way), and after the write hands what it created (the file when it is
 * new, and the directories made for it) to that user with one `chown` in the sandbox (as root).
 * An existing file keeps its owner, as an overwrite by the user would.
 */
import type { Services } from '../api/services.js';
import type { RequestContext } from '../auth/context.js';
import { PermissionDeniedError, SandboxError, isCapsuleError } from '../errors/index.js';
import path from 'node:path';
import { isRoot } from './users.js';

/** Directories above `p` that do not exist yet (outermost first): the write will make them. */
export async function missingParents(s: Services, ctx: RequestContext, id: string, p: string): Promise<string[]> {
  const missing: string[] = [];
  for (let dir = path.posix.dirname(p); dir !== '/'; dir = path.posix.dirname(dir)) {
    try {
      await s.files.stat(ctx, id, dir);
      break;
    } catch (err) {
      if (!(isCapsuleError(err) && err.code === 'not_found')) throw err;
      missing.unshift(dir);
    }
  }
  return missing;
}

/** Gives `paths` to `user` (and the user's group); nothing to do for root. */
export async function giveTo(s: Services, ctx: RequestContext, id: string, user: string, paths: string[]): Promise<void> {
  if (isRoot(user) || paths.length === 0) return;
  const r = await s.commands.run(ctx, id, {
    cmd: ['/bin/sh', '-c', 'u="$1"; shift; exec chown -h -- "$u:$(id -g "$u")" "$@"', 'chown', user, ...paths],
    user: 'root',
    timeoutMs: 30_000,
  });
  if ('exitCode' in r && r.exitCode !== 0) {
    throw new SandboxError(`could not give ${paths.join(', ')} to ${user}: ${r.stderr.trim().slice(0, 500)}`, { user });
  }
}

/** Whether `p` exists (a missing one is false; other errors are thrown). */
export async function exists(s: Services, ctx: RequestContext, id: string, p: string): Promise<boolean> {
  try {
    await s.files.stat(ctx, id, p);
    return true;
  } catch (err) {
    if (isCapsuleError(err) && err.code === 'not_found') return false;
    throw err;
  }
}

/**
 * Refuses, as envd does, what `user` could not do: each of `paths` that exists must be writable
 * (`w`) or readable (`r`) by the user (missing ones are left to the operation's own not-found).
 */
export async function requireAccess(s: Services, ctx: RequestContext, id: string, user: string, mode: 'r' | 'w', paths: string[]): Promise<void> {
  if (isRoot(user) || paths.length === 0) return;
  const r = await s.commands.run(ctx, id, {
    cmd: ['/bin/sh', '-c', `for p in "$@"; do [ -e "$p" ] || continue; test -${mode} "$p" || { echo "$p"; exit 1; }; done`, 'access', ...paths],
    user,
    timeoutMs: 30_000,
  });
  if ('exitCode' in r && r.exitCode !== 0) {
    const which = r.stdout.trim() || paths[0]!;
    throw new PermissionDeniedError(`${user} may not ${mode === 'w' ? 'write to' : 'read'} ${which}`, { user, path: which });
  }
}

export const requireWritable = (s: Services, ctx: RequestContext, id: string, user: string, paths: string[]) => requireAccess(s, ctx, id, user, 'w', paths);

/**
 * Checks that `user` may write the file `p` and returns what the write will create for the user:
 * the missing directories above it and, when it is new, the file itself.
 */
export async function prepareWrite(s: Services, ctx: RequestContext, id: string, user: string, p: string): Promise<string[]> {
  if (isRoot(user)) return [];
  const made = await missingParents(s, ctx, id, p);
  const existed = made.length === 0 && (await exists(s, ctx, id, p));
  await requireWritable(s, ctx, id, user, [existed ? p : path.posix.dirname(made[0] ?? p)]);
  return existed ? made : [...made, p];
}
