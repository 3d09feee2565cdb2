/**
 * WRITE channels: a file uploaded from a stream or a buffer. Data leaves only
 * under the agent's credit, which it returns once bytes reached the file, so
 * the daemon never buffers more than the window for a slow disk.
 *
 * With `file-handoff` and a runtime that can open the agent's files (crun,
 * runc), a large upload skips the relay: the agent offers the temp file it made,
 * the runtime opens it after its checks, and the daemon writes the bytes there
 * itself (file-fill.ts), then tells the agent how many at EOF. When the runtime
 * declines, the same channel sends DATA as usual.
 */
import type { Readable } from 'node:stream';

import { InvalidArgumentError, SandboxError, type CapsuleError } from '../errors/index.js';
import { checkPath, Credit, openChannel, readError, ReplyChannel, type ChannelHost } from './channel.js';
import type { FileHandoff, WriteFileOptions } from './types.js';
import { fillFile, type Fill } from './file-fill.js';
import { followUpload } from './upload-source.js';
import { encodeXattrSet } from './xattr.js';
import { FT, INIT_WINDOW, PayloadReader, PayloadWriter, ProtocolError, STREAM_IN, WRITE_HANDOFF, type Frame } from './frames.js';
import fs from 'node:fs';

/**
 * Credit an upload may have in flight with large-data (the agent widens the window to it right after its
 * OK): several 1 MiB frames, so the agent always has the next one while it writes the last. Also the most
 * an upload holds queued for the agent's socket.
 */
export const WRITE_WINDOW = 4 * 1024 * 1024;

/**
 * Smallest buffer upload worth a handoff: below it, opening the file through /proc costs more than relaying
 * the bytes. A stream (size unknown) always asks.
 */
export const HANDOFF_MIN_BYTES = 1024 * 1024;

class WriteChannel extends ReplyChannel {
  private readonly credit = new Credit(INIT_WINDOW);
  private finished = false;
  private resolveEnd: ((size: number) => void) | undefined;
  /** Source bytes not sent yet, in order; `queued` is their total. */
  private readonly parts: Buffer[] = [];
  private queued = 0;
  private sent = 0;
  private ended = false;
  private flushScheduled = false;
  private detach: (() => void) | undefined;
  /** Set once the daemon writes the file itself (handoff taken): no DATA is sent then. */
  private fill: Fill | undefined;

  constructor(
    host: ChannelHost,
    id: number,
    path: string,
    private readonly data: Readable | Buffer,
    private readonly resolve: (v: { size: number }) => void,
    private readonly reject: (e: Error) => void,
    private readonly handoff: FileHandoff | undefined,
  ) {
    super(host, id, 'WRITE', path);
  }

  protected accepted(payload: Buffer): void {
    // An offer (u32 descriptor, u64 inode) comes only when asked for; an agent that did not make one answers
    // a bare OK, and the upload is relayed.
    if (!this.handoff || payload.length < 12) return this.relay();
    const r = new PayloadReader(payload, 'WRITE OK');
    const fd = r.u32();
    const ino = r.u64();
    this.handoff(fd, BigInt(ino)).then(
      (own) => this.handed(own),
      () => this.handed(undefined),
    );
  }

  /** The runtime's answer to the offer (the daemon's own descriptor for the file): fill it, or relay after all. */
  private handed(own: number | undefined): void {
    if (own !== undefined && this.finished) {
      fs.close(own, () => undefined);
      return;
    }
    this.host.guard(() => (own !== undefined ? this.fillDirect(own) : this.relay()));
    if (own !== undefined && !this.fill) fs.close(own, () => undefined); // the connection closed meanwhile
  }

  private fillDirect(own: number): void {
    if (this.finished) return;
    const fill = fillFile(own, this.data, this.path!);
    this.fill = fill;
    fill.done.then(
      (n) =>
        this.host.guard(() => {
          if (!this.finished) this.sendEof(n, new PayloadWriter().u64(n).finish());
        }),
      (err: Error) => this.host.guard(() => this.fail(err, true)),
    );
  }

  private relay(): void {
    if (this.finished) return;
    if (Buffer.isBuffer(this.data)) {
      this.parts.push(this.data);
      this.queued = this.data.length;
      this.ended = true;
      this.flush();
    } else {
      this.follow(this.data);
    }
  }

  protected refused(err: CapsuleError): void {
    this.fail(err, false);
  }

  protected override frame(f: Frame): void {
    switch (f.type) {
      case FT.WINDOW:
        if (f.stream !== STREAM_IN) return;
        this.credit.add(new PayloadReader(f.payload, 'WINDOW').u32());
        this.flush();
        return;
      case FT.END: {
        if (!this.resolveEnd) throw new ProtocolError('WRITE ended before all data was sent');
        const size = new PayloadReader(f.payload, 'END').u64();
        this.finished = true;
        this.host.forget(this.id);
        this.resolveEnd(size);
        return;
      }
      case FT.ERROR:
        this.fail(readError(f, this.path), false);
        return;
      default:
        return;
    }
  }

  onClose(err: Error): void {
    this.fail(err, false);
  }

  private fail(err: Error, cancel: boolean): void {
    if (this.finished) return;
    this.finished = true;
    this.host.forget(this.id);
    if (cancel) this.host.send(this.id, FT.CLOSE, 0);
    this.credit.fail(err);
    this.detach?.();
    this.fill?.cancel(err);
    this.parts.length = 0;
    // The source belongs to the caller (often an HTTP request): stop reading it, but let the caller
    // decide how to end it, so an error answer can still reach the client.
    if (!Buffer.isBuffer(this.data)) this.data.pause();
    this.reject(err);
  }

  /**
   * Take the source's chunks as they come. Chunks that arrive together (one pass of the event loop) leave
   * together, in frames of up to the connection's DATA size, as views of the chunks (no copy); the source is
   * paused while more than two frames' worth waits for credit.
   */
  private follow(src: Readable): void {
    const high = 2 * this.host.maxData;
    this.detach = followUpload(src, this.path!, {
      chunk: (buf) => {
        this.parts.push(buf);
        this.queued += buf.length;
        if (this.queued >= this.host.maxData) this.flush();
        else this.scheduleFlush();
        if (this.queued >= high) src.pause();
      },
      end: () => {
        this.ended = true;
        this.flush();
      },
      fail: (err) => this.fail(err, true),
    });
    this.resumeSource = () => {
      if (!this.finished && !this.ended && src.isPaused() && this.queued < this.host.maxData) src.resume();
    };
  }

  private resumeSource: () => void = () => undefined;

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      this.host.guard(() => this.flush());
    });
  }

  /** Send what credit allows; after the last byte, EOF. */
  private flush(): void {
    if (this.finished || this.fill) return;
    while (this.queued > 0 && this.credit.value > 0) {
      const n = Math.min(this.queued, this.host.maxData, this.credit.value);
      const frame: Buffer[] = [];
      let taken = 0;
      while (taken < n) {
        const head = this.parts[0]!;
        const want = n - taken;
        if (head.length <= want) {
          frame.push(head);
          this.parts.shift();
          taken += head.length;
        } else {
          frame.push(head.subarray(0, want));
          this.parts[0] = head.subarray(want);
          taken += want;
        }
      }
      this.queued -= n;
      this.credit.value -= n;
      this.sent += n;
      this.host.sendGather(this.id, FT.DATA, STREAM_IN, frame, n);
    }
    this.resumeSource();
    if (this.ended && this.queued === 0 && !this.resolveEnd) {
      this.detach?.();
      this.sendEof(this.sent);
    }
  }

  /** EOF after `total` bytes (a fill's EOF carries the count the daemon wrote): the agent's END must say the same. */
  private sendEof(total: number, payload?: Buffer): void {
    this.resolveEnd = (size: number) => {
      if (size !== total) this.fail(new SandboxError(`agent wrote ${size} bytes of ${total}`, { path: this.path }), false);
      else this.resolve({ size });
    };
    this.host.send(this.id, FT.EOF, STREAM_IN, payload);
  }
}

/**
 * With `xattrs` (feature `xattr`, required when it has entries) the new file gets those attributes before it
 * appears. With `handoff` and feature `file-handoff`, a stream or a buffer of HANDOFF_MIN_BYTES or more is
 * offered for the daemon to write itself.
 */
export function writeFile(host: ChannelHost, path: string, data: Readable | Buffer, opts?: WriteFileOptions): Promise<{ size: number }> {
  const mode = opts?.mode ?? 0o644;
  const handoff =
    opts?.handoff && host.supports('file-handoff') && (!Buffer.isBuffer(data) || data.length >= HANDOFF_MIN_BYTES) ? opts.handoff : undefined;
  return openChannel<{ size: number }>(
    host,
    FT.WRITE,
    () => {
      checkPath(path);
      if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw new InvalidArgumentError(`invalid mode ${mode}`);
      const w = new PayloadWriter().u32(handoff ? mode | WRITE_HANDOFF : mode).bytes(path);
      // A write makes a new file, which has no attributes: an empty set needs nothing on the wire (any agent).
      if (opts?.xattrs && opts.xattrs.entries.length > 0) {
        host.require('xattr');
        encodeXattrSet(w, opts.xattrs);
      }
      return w.finish();
    },
    (id, resolve, reject) => new WriteChannel(host, id, path, data, resolve, reject, handoff),
  );
}
