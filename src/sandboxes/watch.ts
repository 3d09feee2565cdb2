/**
 * File watching in sandboxes: inotify in the agent (protocol 1.2, feature
 * `watch`), events relative to the watched directory. A watch lives as long
 * as its consumer (the transport stops it when its client goes away) or the
 * sandbox (the agent connection closes with it).
 *
 * Memory stays bounded whatever the sandbox does: a consumer that cannot keep
 * up pauses the watch, no credit goes back to the agent, and the agent's own
 * bounded queue drops what does not fit and says so with one `overflow` event.
 * The daemon holds at most one credit window of events per watch.
 */
import type { RequestContext } from '../auth/context.js';
import { AgentFeatureError } from '../agent/client.js';
import type { AgentWatch } from '../agent/types.js';
import { RateLimitedError, UnsupportedError } from '../errors/index.js';
import type { WatchEvent } from '../schemas/watch.js';
import type { SandboxManager } from './manager.js';
import { resolveSandboxPath } from './paths.js';

/** Where events go; `write` false means the consumer is full: the watch pauses until `drained()`. */
export interface WatchSink {
  write(ev: WatchEvent): boolean;
  drained(): Promise<void>;
}

/** Watches one sandbox may have open at once (each is an inotify instance in the sandbox). */
export const MAX_WATCHES_PER_SANDBOX = 64;

export class WatchService {
  private readonly open = new Map<string, number>();

  constructor(private readonly sandboxes: SandboxManager) {}

  /**
   * Start watching; resolves once the watch is in place (events from then on are seen), after the
   * `start` event went to the sink. `done` resolves after the last event (`end`); `stop` ends it early.
   */
  async watch(
    ctx: RequestContext,
    sandboxId: string,
    dir: string,
    opts: { recursive?: boolean | undefined },
    sink: WatchSink,
  ): Promise<{ done: Promise<void>; stop: () => void }> {
    const path = resolveSandboxPath(dir);
    const { conn } = await this.sandboxes.use(ctx, sandboxId, 'watch files');
    const count = this.open.get(sandboxId) ?? 0;
    if (count >= MAX_WATCHES_PER_SANDBOX) {
      throw new RateLimitedError(`sandbox ${sandboxId} already has ${MAX_WATCHES_PER_SANDBOX} watches open; stop one first`, { max: MAX_WATCHES_PER_SANDBOX });
    }
    this.open.set(sandboxId, count + 1);
    let w: AgentWatch;
    try {
      w = await conn.watch(path, { recursive: opts.recursive === true });
    } catch (err) {
      this.release(sandboxId);
      // A sandbox made by an older daemon keeps its older agent.
      if (err instanceof AgentFeatureError) throw new UnsupportedError(err.message, err.details);
      throw err;
    }
    sink.write({ type: 'start', path });
    let paused = false;
    w.on('event', (ev) => {
      const ok =
        ev.type === 'overflow'
          ? sink.write({ type: 'overflow', description: 'events were lost because the watch fell behind; rescan what you track' })
          : sink.write({ type: ev.type, path: ev.path, ...(ev.isDir ? { isDir: true } : {}) });
      if (!ok && !paused) {
        paused = true;
        w.pause();
        void sink.drained().then(() => {
          paused = false;
          w.resume();
        });
      }
    });
    const done = w.ended.then(
      (r) => {
        if (r.reason === 'gone') sink.write({ type: 'end', reason: 'gone' });
      },
      () => {
        sink.write({ type: 'end', reason: 'ended' });
      },
    ).finally(() => this.release(sandboxId));
    return { done, stop: () => w.close() };
  }

  private release(sandboxId: string): void {
    const n = (this.open.get(sandboxId) ?? 1) - 1;
    if (n <= 0) this.open.delete(sandboxId);
    else this.open.set(sandboxId, n);
  }
}
