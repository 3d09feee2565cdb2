/**
 * WRITE channels: a file uploaded from a stream or a buffer. Data leaves only
 * under the agent's credit, which it returns once bytes reached the file, so
 * the daemon never buffers more than the window for a slow disk.
 */
import type { Readable } from 'node:stream';

import { CapsuleError, InvalidArgumentError, SandboxError } from '../errors/index.js';
import { checkPath, Credit, openChannel, readError, ReplyChannel, type ChannelHost } from './channel.js';
import { FT, INIT_WINDOW, MAX_DATA, PayloadReader, PayloadWriter, ProtocolError, STREAM_IN, type Frame } from './frames.js';

class WriteChannel extends ReplyChannel {
  private readonly credit = new Credit(INIT_WINDOW);
  private finished = false;
  private resolveEnd: ((size: number) => void) | undefined;

  constructor(
    host: ChannelHost,
    id: number,
    path: string,
    private readonly data: Readable | Buffer,
    private readonly resolve: (v: { size: number }) => void,
    private readonly reject: (e: Error) => void,
  ) {
    super(host, id, 'WRITE', path);
  }

  protected accepted(): void {
    void this.pump();
  }

  protected refused(err: CapsuleError): void {
    this.fail(err, false);
  }

  protected override frame(f: Frame): void {
    switch (f.type) {
      case FT.WINDOW:
        if (f.stream === STREAM_IN) this.credit.add(new PayloadReader(f.payload, 'WINDOW').u32());
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
    // The source belongs to the caller (often an HTTP request): stop reading it, but let the caller
    // decide how to end it, so an error answer can still reach the client.
    if (!Buffer.isBuffer(this.data)) this.data.pause();
    this.reject(err);
  }

  private async sendChunk(buf: Buffer): Promise<number> {
    let off = 0;
    while (off < buf.length) {
      await this.credit.wait();
      if (this.finished) throw new SandboxError('write aborted');
      const n = Math.min(buf.length - off, MAX_DATA, this.credit.value);
      this.credit.value -= n;
      this.host.send(this.id, FT.DATA, STREAM_IN, buf.subarray(off, off + n));
      off += n;
    }
    return buf.length;
  }

  private async pump(): Promise<void> {
    let sent = 0;
    try {
      if (Buffer.isBuffer(this.data)) {
        sent += await this.sendChunk(this.data);
      } else {
        for await (const chunk of this.data) {
          if (this.finished) return;
          const buf = Buffer.isBuffer(chunk) ? chunk : typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk as Uint8Array);
          sent += await this.sendChunk(buf);
        }
      }
      if (this.finished) return;
      const size = await new Promise<number>((resolve) => {
        this.resolveEnd = resolve;
        this.host.send(this.id, FT.EOF, STREAM_IN);
      });
      if (size !== sent) throw new SandboxError(`agent wrote ${size} bytes of ${sent}`, { path: this.path });
      this.resolve({ size });
    } catch (e) {
      const err = e instanceof CapsuleError ? e : new SandboxError(`writing ${this.path} failed: ${e instanceof Error ? e.message : String(e)}`, { path: this.path });
      this.fail(err, true);
    }
  }
}

export function writeFile(host: ChannelHost, path: string, data: Readable | Buffer, opts?: { mode?: number }): Promise<{ size: number }> {
  const mode = opts?.mode ?? 0o644;
  return openChannel<{ size: number }>(
    host,
    FT.WRITE,
    () => {
      checkPath(path);
      if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw new InvalidArgumentError(`invalid mode ${mode}`);
      return new PayloadWriter().u32(mode).bytes(path).finish();
    },
    (id, resolve, reject) => new WriteChannel(host, id, path, data, resolve, reject),
  );
}
