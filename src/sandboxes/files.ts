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
import { resolveSandboxPath } from './paths.js';

export class FileService {
  constructor(private readonly sandboxes: SandboxManager) {}

  private async conn(id: string, owner?: string | null) {
    this.sandboxes.getRunning(id, owner);
    return this.sandboxes.connection(id);
  }

  async read(id: string, p: string, owner?: string | null): Promise<{ size: number; stream: Readable }> {
    return (await this.conn(id, owner)).readFile(resolveSandboxPath(p));
  }

  async write(id: string, p: string, data: Readable | Buffer, mode: number | undefined, owner?: string | null): Promise<{ path: string; size: number }> {
    const path = resolveSandboxPath(p);
    const r = await (await this.conn(id, owner)).writeFile(path, data, mode !== undefined ? { mode } : {});
    return { path, size: r.size };
  }

  async list(id: string, p: string, limit: number | undefined, owner?: string | null): Promise<{ entries: FileEntry[]; truncated: boolean }> {
    const r = await (await this.conn(id, owner)).list(resolveSandboxPath(p), { limit: limit ?? LIMITS.defaultListEntries });
    return { entries: r.entries.map(toApiEntry), truncated: r.truncated };
  }

  async stat(id: string, p: string, owner?: string | null): Promise<FileEntry> {
    return toApiEntry(await (await this.conn(id, owner)).stat(resolveSandboxPath(p)));
  }

  async mkdir(id: string, p: string, owner?: string | null): Promise<void> {
    await (await this.conn(id, owner)).mkdir(resolveSandboxPath(p));
  }

  async remove(id: string, p: string, recursive: boolean, owner?: string | null): Promise<void> {
    await (await this.conn(id, owner)).remove(resolveSandboxPath(p), { recursive });
  }

  async rename(id: string, from: string, to: string, owner?: string | null): Promise<void> {
    await (await this.conn(id, owner)).rename(resolveSandboxPath(from), resolveSandboxPath(to));
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
