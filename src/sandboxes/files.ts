/**
 * The filesystem of a running sandbox, reached through its agent. Paths are
 * normalised here; the agent resolves them inside the sandbox's own root, so a
 * symlink to /etc/shadow names the sandbox's file, never the host's.
 *
 * File metadata (ADR 0015) lives here too: a write may give the new file string
 * pairs, kept as `user.e2b.<key>` extended attributes, and stat and list show
 * them, for the native API and the E2B view alike.
 */
import type { Readable } from 'node:stream';
import { AgentFeatureError } from '../agent/client.js';
import type { AgentConnection, FileEntry as AgentFileEntry } from '../agent/types.js';
import { FILE_METADATA, FileMetadata, type FileEntry } from '../schemas/files.js';
import { LIMITS } from '../schemas/common.js';
import { InvalidArgumentError, UnsupportedError } from '../errors/index.js';
import type { SandboxManager } from './manager.js';
import type { RequestContext } from '../auth/context.js';
import { resolveSandboxPath } from './paths.js';

export class FileService {
  constructor(private readonly sandboxes: SandboxManager) {}

  private async conn(ctx: RequestContext, id: string, what: string) {
    return (await this.sandboxes.use(ctx, id, what)).conn;
  }

  async read(ctx: RequestContext, id: string, p: string): Promise<{ size: number; stream: Readable }> {
    return (await this.conn(ctx, id, 'read a file')).readFile(resolveSandboxPath(p));
  }

  /**
   * Writes a file (a new one replaces what was there). With `metadata`, the file gets exactly those pairs
   * (keys lowercased); without, or with none, it has no metadata. Metadata needs an agent with `xattr`.
   */
  async write(
    ctx: RequestContext,
    id: string,
    p: string,
    data: Readable | Buffer,
    opts: { mode?: number; metadata?: Record<string, string> } = {},
  ): Promise<{ path: string; size: number; metadata?: FileMetadata }> {
    const path = resolveSandboxPath(p);
    const metadata = opts.metadata === undefined ? undefined : normalizeMetadata(opts.metadata);
    const conn = await this.conn(ctx, id, 'write a file');
    const entries = metadata ? Object.entries(metadata) : [];
    const handoff = this.sandboxes.fileHandoff(id);
    let r: { size: number };
    try {
      r = await conn.writeFile(path, data, {
        ...(handoff ? { handoff } : {}),
        ...(opts.mode !== undefined ? { mode: opts.mode } : {}),
        ...(entries.length > 0 ? { xattrs: { prefix: FILE_METADATA.xattrPrefix, entries } } : {}),
      });
    } catch (err) {
      if (err instanceof AgentFeatureError) throw new UnsupportedError(`file metadata: ${err.message}`, err.details);
      throw err;
    }
    return { path, size: r.size, ...(metadata ? { metadata } : {}) };
  }

  async list(ctx: RequestContext, id: string, p: string, limit?: number): Promise<{ entries: FileEntry[]; truncated: boolean }> {
    const conn = await this.conn(ctx, id, 'list files');
    const r = await conn.list(resolveSandboxPath(p), { limit: limit ?? LIMITS.defaultListEntries, ...metadataOpts(conn) });
    return { entries: r.entries.map(toApiEntry), truncated: r.truncated };
  }

  async stat(ctx: RequestContext, id: string, p: string): Promise<FileEntry> {
    const conn = await this.conn(ctx, id, 'stat a file');
    return toApiEntry(await conn.stat(resolveSandboxPath(p), metadataOpts(conn)));
  }

  async mkdir(ctx: RequestContext, id: string, p: string): Promise<void> {
    await (await this.conn(ctx, id, 'make a directory')).mkdir(resolveSandboxPath(p));
  }

  async remove(ctx: RequestContext, id: string, p: string, recursive: boolean): Promise<void> {
    await (await this.conn(ctx, id, 'remove a file')).remove(resolveSandboxPath(p), { recursive });
  }

  async rename(ctx: RequestContext, id: string, from: string, to: string): Promise<void> {
    await (await this.conn(ctx, id, 'rename a file')).rename(resolveSandboxPath(from), resolveSandboxPath(to));
  }
}

/** Metadata is shown where the agent can read it; an agent without `xattr` gives entries without it. */
function metadataOpts(conn: AgentConnection): { xattrPrefix?: string } {
  return conn.supports('xattr') ? { xattrPrefix: FILE_METADATA.xattrPrefix } : {};
}

/** Checks metadata against the shared rules (FileMetadata) and lowercases its keys. */
export function normalizeMetadata(m: Record<string, string>): FileMetadata {
  const r = FileMetadata.safeParse(m);
  if (!r.success) {
    const i = r.error.issues[0];
    const where = i && i.path.length ? ` ${JSON.stringify(String(i.path[0]).slice(0, 64))}` : '';
    throw new InvalidArgumentError(`invalid metadata${where}: ${i?.message ?? 'bad value'}`, { field: 'metadata' });
  }
  return Object.fromEntries(Object.entries(r.data).map(([k, v]) => [k.toLowerCase(), v]));
}

function toApiEntry(e: AgentFileEntry): FileEntry {
  return {
    name: e.name,
    ...(e.nameBase64 !== undefined ? { nameBase64: e.nameBase64 } : {}),
    path: e.path,
    type: e.type,
    size: e.size,
    mode: e.mode,
    mtime: new Date(Number.isFinite(e.mtimeMs) ? e.mtimeMs : 0).toISOString(),
    ...(e.symlinkTarget !== undefined ? { symlinkTarget: e.symlinkTarget } : {}),
    ...(e.xattrs && Object.keys(e.xattrs).length > 0 ? { metadata: e.xattrs } : {}),
    ...(e.xattrsPartial ? { metadataPartial: true as const } : {}),
  };
}
