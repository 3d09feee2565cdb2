/** LIST channels: a directory's entries, sent in ENTRIES frames under credit and collected (bounded by the limit). */
import type { CapsuleError } from '../errors/index.js';
import { checkPath, openChannel, readError, ReplyChannel, type ChannelHost } from './channel.js';
import { readEntry } from './entry.js';
import { FT, INIT_WINDOW, PayloadReader, PayloadWriter, ProtocolError, STREAM_OUT, type Frame } from './frames.js';
import type { FileEntry } from './types.js';
import { checkXattrPrefix } from './xattr.js';

const DEFAULT_LIST_LIMIT = 10_000;
const MAX_LIST_LIMIT = 1_000_000;

export interface Listing {
  entries: FileEntry[];
  truncated: boolean;
}

class ListChannel extends ReplyChannel {
  private readonly entries: FileEntry[] = [];
  private recvLeft = INIT_WINDOW;

  constructor(
    host: ChannelHost,
    id: number,
    path: string,
    private readonly limit: number,
    private readonly xattrPrefix: string | undefined,
    private readonly resolve: (v: Listing) => void,
    private readonly reject: (e: Error) => void,
  ) {
    super(host, id, 'LIST', path);
  }

  protected accepted(): void {
    /* entries follow */
  }

  protected refused(err: CapsuleError): void {
    this.reject(err);
  }

  protected override frame(f: Frame): void {
    switch (f.type) {
      case FT.ENTRIES: {
        this.recvLeft -= f.payload.length;
        if (this.recvLeft < 0) throw new ProtocolError('directory entries beyond the granted credit');
        const r = new PayloadReader(f.payload, 'ENTRIES');
        const count = r.u32();
        if (this.entries.length + count > this.limit) throw new ProtocolError('more directory entries than the requested limit');
        for (let i = 0; i < count; i++) this.entries.push(readEntry(r, this.path!, true, this.xattrPrefix));
        r.done();
        this.recvLeft += f.payload.length;
        this.host.send(this.id, FT.WINDOW, STREAM_OUT, new PayloadWriter().u32(f.payload.length).finish());
        return;
      }
      case FT.END: {
        const truncated = new PayloadReader(f.payload, 'END').u8() !== 0;
        this.host.forget(this.id);
        this.resolve({ entries: this.entries, truncated });
        return;
      }
      case FT.ERROR:
        this.host.forget(this.id);
        this.reject(readError(f, this.path));
        return;
      default:
        return;
    }
  }

  onClose(err: Error): void {
    this.reject(err);
  }
}

/** With `xattrPrefix` (feature `xattr`, required) each entry carries the attributes under it. */
export function listDir(host: ChannelHost, path: string, opts?: { limit?: number; xattrPrefix?: string }): Promise<Listing> {
  const prefix = opts?.xattrPrefix;
  const want = opts?.limit !== undefined && Number.isFinite(opts.limit) ? Math.floor(opts.limit) : DEFAULT_LIST_LIMIT;
  const limit = Math.min(Math.max(1, want), MAX_LIST_LIMIT);
  return openChannel<Listing>(
    host,
    FT.LIST,
    () => {
      checkPath(path);
      const w = new PayloadWriter().u32(limit).bytes(path);
      if (prefix !== undefined) {
        host.require('xattr');
        checkXattrPrefix(prefix);
        w.bytes(prefix);
      }
      return w.finish();
    },
    (id, resolve, reject) => new ListChannel(host, id, path, limit, prefix, resolve, reject),
  );
}
