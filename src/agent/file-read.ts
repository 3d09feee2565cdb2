/**
 * READ channels: a regular file's bytes as a Node stream of exactly the size
 * the agent announced when it opened the file, or an error. Credit goes back
 * to the agent only as the consumer takes data, so a slow consumer holds at
 * most READ_WINDOW in flight plus the stream's own buffer.
 */
import { Readable } from 'node:stream';

import { PayloadTooLargeError, SandboxError, type CapsuleError } from '../errors/index.js';
import { checkPath, openChannel, readError, ReplyChannel, type ChannelHost } from './channel.js';
import { FT, INIT_WINDOW, PayloadReader, PayloadWriter, ProtocolError, STREAM_OUT, type Frame } from './frames.js';

/**
 * File reads keep up to this much in flight (the protocol's initial 256 KiB
 * plus one grant at the start). With only 256 KiB the agent stalled for a
 * WINDOW round trip every few frames; this is also the most a READ channel
 * holds in daemon memory besides the stream's own buffer, whatever the consumer does.
 */
export const READ_WINDOW = 1024 * 1024;
/**
 * With large-data (1 MiB frames) the window is this much instead: a few frames in flight, so the agent
 * reads the next part of the file while the last one travels.
 */
export const READ_WINDOW_LARGE = 4 * 1024 * 1024;
/** Credit goes back in batches of a quarter window, not per frame: a WINDOW is a write to the agent and a wakeup for it. */
export const READ_GRANT_BATCH = READ_WINDOW / 4;

export interface ReadResult {
  size: number;
  stream: Readable;
}

class ReadChannel extends ReplyChannel {
  private stream: Readable | undefined;
  private readonly window: number;
  private recvLeft = INIT_WINDOW;
  private heldGrant = 0;
  private received = 0;
  private size = 0;
  private done = false;

  constructor(
    host: ChannelHost,
    id: number,
    path: string,
    private readonly maxBytes: number | undefined,
    private readonly resolve: (v: ReadResult) => void,
    private readonly reject: (e: Error) => void,
  ) {
    super(host, id, 'READ', path);
    this.window = host.supports('large-data') ? READ_WINDOW_LARGE : READ_WINDOW;
  }

  protected accepted(payload: Buffer): void {
    this.size = new PayloadReader(payload, 'READ').u64();
    if (this.maxBytes !== undefined && this.size > this.maxBytes) {
      this.cancel();
      this.reject(new PayloadTooLargeError(`${this.path} is ${this.size} bytes, more than the limit of ${this.maxBytes}`, { path: this.path, size: this.size, maxBytes: this.maxBytes }));
      return;
    }
    this.stream = new Readable({
      highWaterMark: INIT_WINDOW,
      read: () => this.release(),
      destroy: (err, cb) => {
        if (!this.done) this.cancel();
        cb(err);
      },
    });
    this.recvLeft += this.window - INIT_WINDOW;
    this.host.send(this.id, FT.WINDOW, STREAM_OUT, new PayloadWriter().u32(this.window - INIT_WINDOW).finish());
    this.resolve({ size: this.size, stream: this.stream });
  }

  protected refused(err: CapsuleError): void {
    this.done = true;
    this.reject(err);
  }

  protected override frame(f: Frame): void {
    // Cancelled at the reply (too large): what was already in flight is dropped.
    if (!this.stream) return;
    switch (f.type) {
      case FT.DATA: {
        if (f.stream !== STREAM_OUT) throw new ProtocolError('READ data on a bad stream');
        this.recvLeft -= f.payload.length;
        if (this.recvLeft < 0) throw new ProtocolError('file data beyond the granted credit');
        const left = this.size - this.received;
        const over = f.payload.length > left;
        // The file grew after the agent announced its size. The stream is exactly `size` bytes (an HTTP
        // download's Content-Length was set from it): a 1.1 agent stops there itself, a 1.0 agent reads on
        // to the end of the file, so its data is cut here and the channel abandoned.
        if (over && this.host.supports('read-to-size')) throw new ProtocolError('file data beyond the size the agent announced');
        const chunk = over ? f.payload.subarray(0, left) : f.payload;
        this.received += chunk.length;
        this.heldGrant += f.payload.length;
        const more = chunk.length === 0 || this.stream.push(chunk);
        if (over) {
          this.cancel();
          this.stream.push(null);
          return;
        }
        // Grant back only what the consumer has taken: push() returning false means it has not.
        if (more) this.release();
        return;
      }
      case FT.END:
        this.done = true;
        this.host.forget(this.id);
        if (this.received < this.size) {
          // Shorter than announced: the file shrank (or was replaced) while being read. Ending normally would
          // hand out a truncated file as complete; the consumer must see it failed.
          this.stream.destroy(new SandboxError(`${this.path} changed while being read: it ended after ${this.received} of the ${this.size} bytes it had when the read began`, { path: this.path, size: this.size, received: this.received }));
          return;
        }
        this.stream.push(null);
        return;
      case FT.ERROR:
        this.done = true;
        this.host.forget(this.id);
        this.stream.destroy(readError(f, this.path));
        return;
      default:
        return;
    }
  }

  /**
   * Return consumed credit to the agent. Batching cannot stall the agent:
   * recvLeft + heldGrant is always the window, so when the agent is out of
   * credit the held amount is the whole window, well past the batch size.
   */
  private release(): void {
    if (this.done || this.heldGrant < this.window / 4) return;
    const n = this.heldGrant;
    this.heldGrant = 0;
    this.recvLeft += n;
    this.host.send(this.id, FT.WINDOW, STREAM_OUT, new PayloadWriter().u32(n).finish());
  }

  private cancel(): void {
    this.done = true;
    this.host.forget(this.id);
    this.host.send(this.id, FT.CLOSE, 0);
  }

  onClose(err: Error): void {
    this.done = true;
    if (this.stream) this.stream.destroy(err);
    else this.reject(err);
  }
}

export function readFile(host: ChannelHost, path: string, opts?: { maxBytes?: number }): Promise<ReadResult> {
  const maxBytes = opts?.maxBytes;
  return openChannel<ReadResult>(
    host,
    FT.READ,
    () => {
      checkPath(path);
      return new PayloadWriter().u64(maxBytes ?? 0).bytes(path).finish();
    },
    (id, resolve, reject) => new ReadChannel(host, id, path, maxBytes, resolve, reject),
  );
}
