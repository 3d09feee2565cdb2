/** One-shot requests, answered by a single OK or ERROR: PING, PS, STAT, MKDIR, REMOVE, RENAME. */
import { SandboxError, type CapsuleError } from '../errors/index.js';
import { checkPath, openChannel, ReplyChannel, type ChannelHost } from './channel.js';
import { readEntry } from './entry.js';
import { checkXattrPrefix } from './xattr.js';
import { FT, PayloadReader, PayloadWriter } from './frames.js';
import type { FileEntry } from './types.js';

export interface ProcessInfo {
  pid: number;
  argv: string[];
  /** Only present with includeExited. */
  exited?: boolean;
  exitCode?: number;
}

class OneShot<T> extends ReplyChannel {
  constructor(
    host: ChannelHost,
    id: number,
    what: string,
    path: string | undefined,
    /** Runs while the channel is still registered: a ProtocolError here closes the connection and rejects. */
    private readonly parse: (payload: Buffer) => T,
    private readonly resolve: (v: T) => void,
    private readonly reject: (e: Error) => void,
  ) {
    super(host, id, what, path);
  }
  protected accepted(payload: Buffer): void {
    const v = this.parse(payload);
    this.host.forget(this.id);
    this.resolve(v);
  }
  protected refused(err: CapsuleError): void {
    this.reject(err);
  }
  onClose(err: Error): void {
    this.reject(err);
  }
}

function request<T>(host: ChannelHost, type: number, what: string, build: () => Buffer, parse: (p: Buffer) => T, path?: string): Promise<T> {
  return openChannel<T>(host, type, build, (id, resolve, reject) => new OneShot(host, id, what, path, parse, resolve, reject));
}

const raw = (p: Buffer): Buffer => p;
const none = (): void => undefined;

export async function ping(host: ChannelHost): Promise<{ version: string }> {
  const r = await request(host, FT.PING, 'PING', () => Buffer.alloc(0), raw);
  if (r.length > 256) throw new SandboxError('agent version string too long');
  return { version: r.toString('utf8') };
}

export async function listProcesses(host: ChannelHost, opts?: { includeExited?: boolean }): Promise<ProcessInfo[]> {
  const r = new PayloadReader(await request(host, FT.PS, 'PS', () => Buffer.alloc(0), raw), 'PS');
  const count = r.u32();
  r.u8(); // truncated flag
  if (count > 100_000) throw new SandboxError('agent process list is implausibly long');
  const out: ProcessInfo[] = [];
  for (let i = 0; i < count; i++) {
    const pid = r.u32();
    const exited = r.u8() !== 0;
    const exitCode = r.u32();
    const argc = r.u32();
    if (argc > 4096) throw new SandboxError('agent process list: bad argv count');
    const argv: string[] = [];
    for (let j = 0; j < argc; j++) argv.push(r.bytes(4096).toString('utf8'));
    if (exited && !opts?.includeExited) continue;
    out.push(opts?.includeExited ? { pid, argv, exited, ...(exited ? { exitCode } : {}) } : { pid, argv });
  }
  return out;
}

function withPath(path: string, build: () => Buffer): () => Buffer {
  return () => {
    checkPath(path);
    return build();
  };
}

/** With `xattrPrefix` (feature `xattr`, required) the entry carries the attributes under it. */
export function stat(host: ChannelHost, path: string, opts?: { xattrPrefix?: string }): Promise<FileEntry> {
  const prefix = opts?.xattrPrefix;
  return request(host, FT.STAT, 'STAT', withPath(path, () => {
    const w = new PayloadWriter().bytes(path);
    if (prefix !== undefined) {
      host.require('xattr');
      checkXattrPrefix(prefix);
      w.bytes(prefix);
    }
    return w.finish();
  }), (p) => {
    const r = new PayloadReader(p, 'STAT');
    const e = readEntry(r, path, false, prefix);
    if (prefix !== undefined) r.done();
    return e;
  }, path);
}

export function mkdir(host: ChannelHost, path: string): Promise<void> {
  return request(host, FT.MKDIR, 'MKDIR', withPath(path, () => new PayloadWriter().bytes(path).finish()), none, path);
}

export function remove(host: ChannelHost, path: string, opts?: { recursive?: boolean }): Promise<void> {
  return request(host, FT.REMOVE, 'REMOVE', withPath(path, () => new PayloadWriter().u8(opts?.recursive ? 1 : 0).bytes(path).finish()), none, path);
}

export function rename(host: ChannelHost, from: string, to: string): Promise<void> {
  return request(host, FT.RENAME, 'RENAME', () => {
    checkPath(from);
    checkPath(to);
    return new PayloadWriter().bytes(from).bytes(to).finish();
  }, none, from);
}
