/**
 * envd's `filesystem.Filesystem` service over Connect, on Capsule's file and watch services: stat,
 * list (with depth), make dir, move, remove, watch (streamed), and the polled watchers E2B's
 * synchronous Python SDK uses. Relative paths are the acting user's home's.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Services } from '../api/services.js';
import { LIMITS } from '../schemas/common.js';
import type { FileEntry } from '../schemas/files.js';
import type { WatchEvent } from '../schemas/watch.js';
import { filesystemSvc as F } from '../schemas/e2b/index.js';
import { timestamp } from '../schemas/e2b/proto-json.js';
import { isCapsuleError, RateLimitedError } from '../errors/index.js';
import { serverStream, unary } from './connect.js';
import { ConnectError } from './errors.js';
import type { EnvdAuth, EnvdCaller } from './envd-auth.js';
import { giveTo, missingParents, requireAccess, requireWritable } from './ownership.js';
import { basicUser, effectiveUser, userPath } from './users.js';

const SERVICE = '/filesystem.Filesystem';
type Params = { id: string };

/** Entries a ListDir answers at most, over all depths. */
const MAX_LIST = LIMITS.maxListEntries;
/** Events a polled watcher keeps between two polls; older ones are dropped. */
const WATCHER_BUFFER = 4096;
const MAX_WATCHERS = 64;

const TYPE_CHAR: Record<string, string> = { dir: 'd', symlink: 'L', fifo: 'p', socket: 'S', char: 'c', block: 'D' };

/** Go's FileMode.String(), which envd's `permissions` carries: type letter, then rwx triplets. */
function permissions(e: FileEntry): string {
  const bits = 'rwxrwxrwx'.split('').map((ch, i) => (e.mode & (1 << (8 - i)) ? ch : '-')).join('');
  return `${TYPE_CHAR[e.type] ?? '-'}${bits}`;
}

export function entryInfo(e: FileEntry): F.EntryInfo {
  return {
    name: e.name,
    type: e.type === 'file' || e.type === 'dir' || e.type === 'symlink' ? F.FILE_TYPE[e.type] : 'FILE_TYPE_UNSPECIFIED',
    path: e.path,
    size: String(e.size),
    mode: e.mode & 0o7777,
    permissions: permissions(e),
    // The agent reports no owners; E2B's SDK passes these through as they are.
    owner: '',
    group: '',
    modifiedTime: timestamp(Date.parse(e.mtime)),
    ...(e.symlinkTarget !== undefined ? { symlinkTarget: e.symlinkTarget } : {}),
    ...(e.metadata !== undefined ? { metadata: e.metadata } : {}),
  };
}

/**
 * Capsule's watch events as envd's. The watch service already hides the files API's temporary
 * file and reports a written file as create + write (src/sandboxes/watch-writes.ts), as envd does.
 */
export function eventTranslator(): (ev: WatchEvent) => F.FilesystemEvent[] {
  return (ev) => {
    if (ev.type !== 'create' && ev.type !== 'write' && ev.type !== 'remove' && ev.type !== 'rename' && ev.type !== 'chmod') return [];
    return [{ name: ev.path, type: F.EVENT_TYPE[ev.type] }];
  };
}

interface Watcher {
  sandboxId: string;
  events: F.FilesystemEvent[];
  dropped: boolean;
  stop: () => void;
  ended: boolean;
}

export function filesystemService(app: FastifyInstance, s: Services, auth: EnvdAuth): void {
  const watchers = new Map<string, Watcher>();

  const caller = (req: FastifyRequest): EnvdCaller & { user: string } => {
    const c = auth.running(req, (req.params as Params).id);
    return { ...c, user: effectiveUser(c.rec, basicUser(req)) };
  };

  unary(app, `${SERVICE}/Stat`, F.StatRequest, async (msg, req) => {
    const c = caller(req);
    return { entry: entryInfo(await s.files.stat(c.ctx, c.id, userPath(msg.path, c.user))) };
  });

  // Depth 1 is the directory's entries; each further level lists the directories found (not through symlinks).
  unary(app, `${SERVICE}/ListDir`, F.ListDirRequest, async (msg, req) => {
    const c = caller(req);
    const depth = msg.depth === undefined || msg.depth === 0 ? 1 : msg.depth;
    const entries: F.EntryInfo[] = [];
    const top = userPath(msg.path, c.user);
    await requireAccess(s, c.ctx, c.id, c.user, 'r', [top]);
    let level = [top];
    for (let d = 1; d <= depth && level.length > 0; d++) {
      const next: string[] = [];
      for (const dir of level) {
        const r = await s.files.list(c.ctx, c.id, dir, MAX_LIST - entries.length);
        for (const e of r.entries) {
          entries.push(entryInfo(e));
          if (e.type === 'dir') next.push(e.path);
        }
        if (entries.length >= MAX_LIST) throw new ConnectError('resource_exhausted', `more than ${MAX_LIST} entries: list with a smaller depth`);
      }
      level = next;
    }
    return { entries };
  });

  // E2B answers already_exists for a directory that is there (the SDK's makeDir() then returns false).
  unary(app, `${SERVICE}/MakeDir`, F.MakeDirRequest, async (msg, req) => {
    const c = caller(req);
    const p = userPath(msg.path, c.user);
    const existing = await s.files.stat(c.ctx, c.id, p).catch((err: unknown) => {
      if (isCapsuleError(err) && err.code === 'not_found') return undefined;
      throw err;
    });
    if (existing) throw new ConnectError('already_exists', `${p} already exists`);
    const made = await missingParents(s, c.ctx, c.id, path.posix.join(p, 'x'));
    await requireWritable(s, c.ctx, c.id, c.user, [path.posix.dirname(made[0] ?? p)]);
    await s.files.mkdir(c.ctx, c.id, p);
    await giveTo(s, c.ctx, c.id, c.user, made);
    return { entry: entryInfo(await s.files.stat(c.ctx, c.id, p)) };
  });

  unary(app, `${SERVICE}/Move`, F.MoveRequest, async (msg, req) => {
    const c = caller(req);
    const to = userPath(msg.destination, c.user);
    const from = userPath(msg.source, c.user);
    await requireWritable(s, c.ctx, c.id, c.user, [path.posix.dirname(from), path.posix.dirname(to)]);
    await s.files.rename(c.ctx, c.id, from, to);
    return { entry: entryInfo(await s.files.stat(c.ctx, c.id, to)) };
  });

  unary(app, `${SERVICE}/Remove`, F.RemoveRequest, async (msg, req) => {
    const c = caller(req);
    const p = userPath(msg.path, c.user);
    await requireWritable(s, c.ctx, c.id, c.user, [path.posix.dirname(p)]);
    await s.files.remove(c.ctx, c.id, p, true);
    return {};
  });

  serverStream(app, `${SERVICE}/WatchDir`, F.WatchDirRequest, () => ({ keepalive: {} }) as F.WatchDirResponse, async (msg, stream, call) => {
    const c = caller(call.req);
    if (msg.includeEntry) throw new ConnectError('unimplemented', 'watch events with entries are not supported');
    let first = true;
    const translate = eventTranslator();
    const w = await s.watches.watch(c.ctx, c.id, userPath(msg.path, c.user), { recursive: msg.recursive === true }, {
      write: (ev) => {
        if (ev.type === 'start' && first) {
          first = false;
          return stream.send({ start: {} });
        }
        let ok = true;
        for (const e of translate(ev)) ok = stream.send({ filesystem: e }) && ok;
        return ok;
      },
      drained: () => stream.drained(),
    });
    const stop = () => w.stop();
    call.signal.addEventListener('abort', stop, { once: true });
    try {
      await w.done;
    } finally {
      call.signal.removeEventListener('abort', stop);
      w.stop();
    }
  });

  unary(app, `${SERVICE}/CreateWatcher`, F.CreateWatcherRequest, async (msg, req) => {
    const c = caller(req);
    if (msg.includeEntry) throw new ConnectError('unimplemented', 'watch events with entries are not supported');
    if ([...watchers.values()].filter((x) => x.sandboxId === c.id).length >= MAX_WATCHERS) {
      throw new RateLimitedError(`sandbox ${c.id} already has ${MAX_WATCHERS} watchers: remove one first`);
    }
    const id = randomBytes(12).toString('hex');
    const watcher: Watcher = { sandboxId: c.id, events: [], dropped: false, stop: () => undefined, ended: false };
    const translate = eventTranslator();
    const w = await s.watches.watch(c.ctx, c.id, userPath(msg.path, c.user), { recursive: msg.recursive === true }, {
      write: (ev) => {
        for (const e of translate(ev)) {
          if (watcher.events.length >= WATCHER_BUFFER) {
            watcher.events.shift();
            watcher.dropped = true;
          }
          watcher.events.push(e);
        }
        return true;
      },
      drained: () => Promise.resolve(),
    });
    watcher.stop = w.stop;
    void w.done.finally(() => {
      watcher.ended = true;
      // Forgotten a while after it ended, whether or not anyone polls it again.
      setTimeout(() => watchers.delete(id), 5 * 60_000).unref();
    });
    watchers.set(id, watcher);
    return { watcherId: id };
  });

  const ownWatcher = (c: EnvdCaller, id: string): Watcher => {
    const w = watchers.get(id);
    if (!w || w.sandboxId !== c.id) throw new ConnectError('not_found', `no watcher ${id}`);
    return w;
  };

  unary(app, `${SERVICE}/GetWatcherEvents`, F.WatcherRequest, async (msg, req) => {
    const w = ownWatcher(caller(req), msg.watcherId);
    const events = w.events;
    w.events = [];
    if (w.ended && events.length === 0) {
      watchers.delete(msg.watcherId);
      throw new ConnectError('not_found', `watcher ${msg.watcherId} ended: its directory or sandbox is gone`);
    }
    return { events };
  });

  unary(app, `${SERVICE}/RemoveWatcher`, F.WatcherRequest, async (msg, req) => {
    const w = ownWatcher(caller(req), msg.watcherId);
    watchers.delete(msg.watcherId);
    w.stop();
    return {};
  });
}
