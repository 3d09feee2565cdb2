/**
 * The filesystem of a running sandbox, reached through its agent. Paths are
 * normalised here; the agent resolves them inside the sandbox's own root, so a
 * symlink to /etc/shadow names the sandbox's file, never the host's.
 */
import type { Readable } from 'node:stream';
import type { FileEntry as AgentFileEntry } from '../agent/types.js';
import type { FileEntry } from '../schemas/files.js';
import { LIMITS } from '../schemas/common.js';
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

  async write(ctx: RequestContext, id: string, p: string, data: Readable | Buffer, mode?: number): Promise<{ path: string; size: number }> {
    const path = resolveSandboxPath(p);
    const r = await (await this.conn(ctx, id, 'write a file')).writeFile(path, data, mode !== undefined ? { mode } : {});
    return { path, size: r.size };
  }

  async list(ctx: RequestContext, id: string, p: string, limit?: number): Promise<{ entries: FileEntry[]; truncated: boolean }> {
    const r = await (await this.conn(ctx, id, 'list files')).list(resolveSandboxPath(p), { limit: limit ?? LIMITS.defaultListEntries });
    return { entries: r.entries.map(toApiEntry), truncated: r.truncated };
  }

  async stat(ctx: RequestContext, id: string, p: string): Promise<FileEntry> {
    return toApiEntry(await (await this.conn(ctx, id, 'stat a file')).stat(resolveSandboxPath(p)));
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
  };
}
