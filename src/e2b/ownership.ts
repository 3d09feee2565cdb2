/**
 * Files written through E2B's API belong to the user who wrote them, as envd makes them. The agent
 * writes as root, so after a write or mkdir for another user the adapter hands the file, and the
 * directories the write created, to that user with one `chown` in the sandbox (as root).
 */
import type { Services } from '../api/services.js';
import type { RequestContext } from '../auth/context.js';
import { SandboxError, isCapsuleError } from '../errors/index.js';
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
