/**
 * WATCH channels (1.2, feature `watch`): a directory watched by inotify in the
 * agent. Events arrive in EVENTS frames under credit that goes back as the
 * listeners consume them; a paused watch returns none, so the agent's bounded
 * queue fills and it reports the gap as one `overflow` event. The daemon never
 * holds more than one window of events per watch.
 */
import { EventEmitter } from 'node:events';

import type { CapsuleError } from '../errors/index.js';
import { checkPath, openChannel, readError, ReplyChannel, type ChannelHost } from './channel.js';
import { FT, INIT_WINDOW, PayloadReader, PayloadWriter, ProtocolError, STREAM_OUT, WATCH_EVENT, WATCH_EVENT_DIR, WATCH_RECURSIVE, type Frame } from './frames.js';
import type { AgentWatch, WatchEvent, WatchEventType } from './types.js';

const TYPES = new Map<number, WatchEventType | 'gone'>(Object.entries(WATCH_EVENT).map(([k, v]) => [v, k as WatchEventType | 'gone']));
/** A path the agent sends is at most PATH_MAX. */
const MAX_EVENT_PATH = 4096;

class WatchChannel extends ReplyChannel implements AgentWatch {
  private readonly emitter = new EventEmitter();
  private recvLeft = INIT_WINDOW;
  private owed = 0;
  private paused = false;
  private done = false;
  readonly ended: Promise<{ reason: 'gone' | 'closed' }>;
  private resolveEnd!: (v: { reason: 'gone' | 'closed' }) => void;
  private rejectEnd!: (e: Error) => void;

  constructor(
    host: ChannelHost,
    id: number,
    path: string,
    private readonly onOpen: (err: Error | null, w?: WatchChannel) => void,
  ) {
    super(host, id, 'WATCH', path);
    this.ended = new Promise((resolve, reject) => {
      this.resolveEnd = resolve;
      this.rejectEnd = reject;
    });
    this.ended.catch(() => undefined);
  }

  on(event: 'event', listener: (ev: WatchEvent) => void): this {
    this.emitter.on(event, listener);
    return this;
  }

  protected accepted(): void {
    this.onOpen(null, this);
  }

  protected refused(err: CapsuleError): void {
    this.done = true;
    this.onOpen(err);
  }

  protected override frame(f: Frame): void {
    switch (f.type) {
      case FT.EVENTS: {
        this.recvLeft -= f.payload.length;
        if (this.recvLeft < 0) throw new ProtocolError('watch events beyond the granted credit');
        const r = new PayloadReader(f.payload, 'EVENTS');
        const count = r.u32();
        // Decoded whole before any listener runs: a bad frame closes the connection without half its events.
        const events: WatchEvent[] = [];
        let gone = false;
        for (let i = 0; i < count; i++) {
          const type = TYPES.get(r.u8());
          const flags = r.u8();
          const raw = r.bytes(MAX_EVENT_PATH);
          if (!type) throw new ProtocolError('unknown watch event type');
          if (raw.includes(0) || raw[0] === 0x2f) throw new ProtocolError('watch event path is absolute or contains NUL');
          if (type === 'gone') gone = true;
          else events.push({ type, path: raw.toString('utf8'), isDir: (flags & WATCH_EVENT_DIR) !== 0 });
        }
        r.done();
        for (const ev of events) this.safeEmit(ev);
        if (gone) this.finish('gone');
        if (this.paused) this.owed += f.payload.length;
        else this.grant(f.payload.length);
        return;
      }
      case FT.END:
        this.finish('gone');
        return;
      case FT.ERROR:
        this.fail(readError(f, this.path));
        return;
      default:
        return;
    }
  }

  private grant(n: number): void {
    if (this.done || n === 0) return;
    this.recvLeft += n;
    this.host.send(this.id, FT.WINDOW, STREAM_OUT, new PayloadWriter().u32(n).finish());
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    const n = this.owed;
    this.owed = 0;
    this.host.guard(() => this.grant(n));
  }

  close(): void {
    if (this.done) return;
    this.host.send(this.id, FT.CLOSE, 0);
    this.finish('closed');
  }

  onClose(err: Error): void {
    if (!this.hasReply) {
      this.done = true;
      this.onOpen(err);
      return;
    }
    this.fail(err);
  }

  private finish(reason: 'gone' | 'closed'): void {
    if (this.done) return;
    this.done = true;
    this.host.forget(this.id);
    this.resolveEnd({ reason });
  }

  private fail(err: Error): void {
    if (this.done) return;
    this.done = true;
    this.host.forget(this.id);
    this.rejectEnd(err);
  }

  private safeEmit(ev: WatchEvent): void {
    try {
      this.emitter.emit('event', ev);
    } catch (e) {
      process.nextTick(() => {
        throw e;
      });
    }
  }
}

export function watchDir(host: ChannelHost, path: string, opts?: { recursive?: boolean }): Promise<AgentWatch> {
  return openChannel<AgentWatch>(
    host,
    FT.WATCH,
    () => {
      host.require('watch');
      checkPath(path);
      return new PayloadWriter().u8(opts?.recursive ? WATCH_RECURSIVE : 0).bytes(path).finish();
    },
    (id, resolve, reject) => new WatchChannel(host, id, path, (err, w) => (err ? reject(err) : resolve(w!))),
  );
}
