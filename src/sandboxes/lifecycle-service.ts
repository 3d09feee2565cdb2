/**
 * Pause/resume, stop/start and the automatic policies (timeout and idleness
 * acting as lifecycle.onTimeout says, retention of paused and stopped
 * sandboxes), on the state machine of lifecycle.ts. The sandbox service
 * (manager.ts) owns this and exposes its verbs with the caller's context; this
 * module does the transitions and never sees a caller.
 *
 * - **One operation per sandbox at a time.** Verbs on the same sandbox queue
 *   behind each other (`serial`), so a resume asked while a pause runs waits
 *   for it and then resumes; each step is still a compare-and-set in the store,
 *   so a kill meanwhile wins and the operation's own next step fails.
 * - **A kill waits for the operation in flight** (`settled`), then removes the
 *   sandbox; the operation never cleans up after losing to it.
 * - **The clock stops while the sandbox sleeps.** Pause and stop keep what was
 *   left of its lifetime (`remainingMs`) and set `expiresAt` to the retention
 *   deadline instead; resume and start give the lifetime back (policy.ts).
 * - **A paused sandbox's agent is frozen**: nothing here talks to it until it is
 *   thawed, and a sandbox re-found paused after a daemon restart is connected
 *   to (and its processes re-attached) only when it is resumed.
 */
import type { AgentConnection } from '../agent/types.js';
import type { RuntimeDriver } from '../runtime/types.js';
import { ConflictError, NotFoundError } from '../errors/index.js';
import { isTerminal, requireState, wrongState, type SandboxState, type TerminalState } from './lifecycle.js';
import { ActivityTracker } from './activity.js';
import { dueReason, lifetimeAtWake, remainingAt } from './policy.js';
import { requireCapability } from './spec.js';
import { backendOf } from '../runtime/backends.js';
import type { SandboxRecord, SandboxStore } from './store.js';

interface Logger {
  info(obj: unknown, msg?: string): void;
  warn(obj: unknown, msg?: string): void;
  error(obj: unknown, msg?: string): void;
}

/** What the lifecycle needs from the sandbox service that owns it. */
export interface LifecycleHost {
  store: SandboxStore;
  runtime: RuntimeDriver;
  log: Logger;
  /** The sandbox's agent connection, made when there is none. */
  connect(id: string, signal?: AbortSignal): Promise<AgentConnection>;
  /** Close the agent connection (the agent is about to go). */
  dropConnection(id: string): void;
  /** Every process of the sandbox is gone (it stops): commands end, process rows go. */
  processesGone(id: string): void;
  /** Re-attach the processes an agent kept (a sandbox re-found paused after a restart, now resumed; a restored one). */
  adopt(id: string, conn: AgentConnection): Promise<void>;
  /** The agent connection is about to close with every process kept (hibernate): keep following them, to re-attach later. */
  detach?(id: string): void;
  /** Move to a terminal state and remove everything (waits for an operation in flight first). */
  end(id: string, state: TerminalState, reason: string): Promise<void>;
  /** The sandbox booted again (start): a new network namespace, so its egress relay is made anew. */
  networkBack?(id: string, conn: AgentConnection): Promise<void>;
}

export interface WakeOptions {
  /** Lifetime from now once running; default: what it had left (policy.ts lifetimeAtWake). */
  timeoutMs?: number | undefined;
  /** Runs just before a stopped sandbox starts (the caller's memory quota); throwing refuses the start. */
  beforeStart?: ((rec: SandboxRecord) => void) | undefined;
}

/** Recovery of one row after a restart: it runs (adopt it), it sleeps (keep it), or it ended. */
export type Recovered = 'running' | 'kept' | 'ended';

const fmtMs = (ms: number): string => (ms % 60_000 === 0 ? `${ms / 60_000} min` : ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`);

export class SandboxLifecycle {
  private readonly ops = new Map<string, Promise<unknown>>();
  /** Re-found paused at a restart: connect and re-attach processes when resumed. */
  private readonly unadopted = new Set<string>();
  readonly activity = new ActivityTracker();

  constructor(private readonly host: LifecycleHost) {}

  // --- verbs (the sandbox service checked who may) ------------------------------------

  pause(id: string): Promise<void> {
    return this.serial(id, () => this.pauseNow(id));
  }

  resume(id: string, opts: WakeOptions = {}): Promise<void> {
    return this.serial(id, () => this.resumeNow(id, opts));
  }

  stop(id: string): Promise<void> {
    return this.serial(id, () => this.stopNow(id));
  }

  /** Pause with memory: 'disk' (needs the memorySnapshot capability). Hibernating a hibernated sandbox does nothing. */
  hibernate(id: string): Promise<void> {
    return this.serial(id, () => this.hibernateNow(id));
  }

  start(id: string, opts: WakeOptions = {}): Promise<void> {
    return this.serial(id, () => this.startNow(id, opts));
  }

  /**
   * A filesystem snapshot: `capture` runs while no other operation can touch
   * the sandbox (the queue), with a running sandbox in `snapshotting` (so
   * commands wait and the reaper leaves it alone) and back to `running` after;
   * a paused one stays `paused` throughout, so nothing thaws it behind the
   * state machine's back (`capture` itself freezes a running sandbox's
   * processes while it copies, and thaws only what it froze).
   */
  snapshot<T>(id: string, capture: () => Promise<T>): Promise<T> {
    return this.serial(id, () => this.snapshotNow(id, capture));
  }

  /**
   * For a call that needs the sandbox running (autoResume): once any operation
   * in flight is done, resume it if paused, start it if stopped. Any other state
   * is left for the caller to refuse.
   */
  wake(id: string, opts: WakeOptions = {}): Promise<void> {
    return this.serial(id, async () => {
      const state = this.host.store.get(id)?.state;
      if (state === 'paused' || state === 'hibernated') await this.resumeNow(id, opts);
      else if (state === 'stopped') await this.startNow(id, opts);
    });
  }

  /** Resolves once the operation in flight on `id` (if any) has finished, however it ended. */
  settled(id: string): Promise<void> {
    const op = this.ops.get(id);
    return op ? op.then(() => undefined, () => undefined) : Promise.resolve();
  }

  /** Every operation in flight (a daemon stopping waits for them). */
  allSettled(): Promise<unknown> {
    return Promise.allSettled([...this.ops.values()]);
  }

  /** The sandbox ended: stop tracking it. */
  forget(id: string): void {
    this.activity.forget(id);
    this.unadopted.delete(id);
  }

  // --- the transitions ------------------------------------------------------------------

  private record(id: string): SandboxRecord {
    const rec = this.host.store.get(id);
    if (!rec) throw new NotFoundError(`sandbox ${id} not found`, { id });
    return rec;
  }

  private async pauseNow(id: string): Promise<void> {
    const rec = this.record(id);
    if (rec.state === 'paused') return;
    requireState(id, rec.state, 'pause', 'pause', rec.endReason);
    requireCapability(backendOf(this.host.runtime, id), 'pause', 'pause the sandbox');
    const remainingMs = remainingAt(rec.expiresAt, Date.now());
    this.claim(id, ['running'], 'pausing', 'pause', { remainingMs });
    try {
      await this.host.runtime.pause(id);
    } catch (err) {
      // Not frozen: it runs on, with the clock it had.
      if (!this.host.store.transition(id, ['pausing'], 'running', { expiresAt: Date.now() + remainingMs }).ok) throw this.lost(id, 'paused');
      throw err;
    }
    this.finish(id, 'pausing', 'paused', { expiresAt: Date.now() + rec.lifecycle.deleteAfterMs });
    this.host.log.info({ id, remainingMs }, 'sandbox paused');
  }

  private async resumeNow(id: string, opts: WakeOptions): Promise<void> {
    const rec = this.record(id);
    if (rec.state === 'running') return;
    requireState(id, rec.state, 'resume', 'resume', rec.endReason);
    if (rec.state === 'hibernated') return this.restoreNow(rec, opts);
    this.claim(id, ['paused'], 'resuming', 'resume');
    try {
      await this.host.runtime.resume(id);
    } catch (err) {
      const info = await this.host.runtime.inspect(id).catch(() => ({ status: 'missing' as const }));
      if (info.status === 'paused') this.host.store.transition(id, ['resuming'], 'paused');
      // Gone or broken: end it (the kill waits for this operation, so it is not awaited here).
      else void this.host.end(id, 'failed', `resume failed: ${(err as Error).message}`.slice(0, 2000));
      throw err;
    }
    this.finish(id, 'resuming', 'running', { expiresAt: Date.now() + lifetimeAtWake(rec.remainingMs, rec.timeoutMs, opts.timeoutMs) });
    this.noteWake(rec);
    if (this.unadopted.delete(id)) await this.adoptNow(id);
    this.host.log.info({ id }, 'sandbox resumed');
  }

  private async stopNow(id: string): Promise<void> {
    const rec = this.record(id);
    if (rec.state === 'stopped') return;
    requireState(id, rec.state, 'stop', 'stop', rec.endReason);
    requireCapability(backendOf(this.host.runtime, id), 'stop', 'stop the sandbox');
    // A paused or hibernated sandbox's clock stopped at its pause.
    const remainingMs = rec.state === 'running' ? remainingAt(rec.expiresAt, Date.now()) : (rec.remainingMs ?? 0);
    this.claim(id, ['running', 'paused', 'hibernated'], 'stopping', 'stop', { remainingMs });
    this.unadopted.delete(id);
    this.host.dropConnection(id);
    this.host.processesGone(id);
    try {
      await this.host.runtime.stop(id);
    } catch (first) {
      this.host.log.warn({ id, err: String(first) }, 'stopping a sandbox failed; trying once more');
      try {
        await this.host.runtime.stop(id);
      } catch (err) {
        void this.host.end(id, 'failed', `stop failed: ${(err as Error).message}`.slice(0, 2000));
        throw err;
      }
    }
    this.finish(id, 'stopping', 'stopped', { expiresAt: Date.now() + rec.lifecycle.deleteAfterMs });
    this.host.log.info({ id, remainingMs }, 'sandbox stopped');
  }

  /**
   * Hibernate: every process and its memory go to disk (CRIU, through the driver's `checkpoint`) and the
   * sandbox's memory is freed. The daemon lets go of the agent first (a connection to the host cannot be
   * dumped) but keeps following its processes; the restore re-attaches them. A dump that fails leaves it
   * running with the clock it had.
   */
  private async hibernateNow(id: string): Promise<void> {
    const rec = this.record(id);
    if (rec.state === 'hibernated') return;
    requireState(id, rec.state, 'hibernate', 'hibernate', rec.endReason);
    const backend = backendOf(this.host.runtime, id);
    requireCapability(backend, 'memorySnapshot', 'hibernate the sandbox');
    const remainingMs = remainingAt(rec.expiresAt, Date.now());
    this.claim(id, ['running'], 'hibernating', 'hibernate', { remainingMs });
    this.host.detach?.(id);
    this.host.dropConnection(id);
    let result: { ms: number; imageBytes: number };
    try {
      result = await this.checkpointWithRetry(id);
    } catch (err) {
      const info = await this.host.runtime.inspect(id).catch(() => ({ status: 'missing' as const }));
      if (info.status === 'running') {
        if (!this.host.store.transition(id, ['hibernating'], 'running', { expiresAt: Date.now() + remainingMs }).ok) throw this.lost(id, 'hibernated');
        await this.adoptNow(id);
      } else {
        void this.host.end(id, 'failed', `hibernate failed: ${(err as Error).message}`.slice(0, 2000));
      }
      throw err;
    }
    this.finish(id, 'hibernating', 'hibernated', { expiresAt: Date.now() + rec.lifecycle.deleteAfterMs });
    this.host.log.info({ id, remainingMs, ...result }, 'sandbox hibernated');
  }

  /**
   * The agent sees the daemon's connections close a moment after we close them; a dump in that moment
   * finds a socket whose peer is outside the sandbox and fails with the sandbox still running. Try again.
   */
  private async checkpointWithRetry(id: string): Promise<{ ms: number; imageBytes: number }> {
    const runtime = this.host.runtime;
    if (!runtime.checkpoint) throw new ConflictError(`the ${runtime.kind} backend cannot hibernate sandboxes`, { id });
    for (let attempt = 0; ; attempt++) {
      try {
        return await runtime.checkpoint(id);
      } catch (err) {
        const info = await runtime.inspect(id).catch(() => ({ status: 'missing' as const }));
        if (attempt >= 2 || info.status !== 'running') throw err;
        this.host.log.warn({ id, err: String(err) }, 'checkpoint failed with the sandbox still running; trying again');
        await new Promise((r) => setTimeout(r, 100 * (attempt + 1)));
      }
    }
  }

  /** Resume of a hibernated sandbox: restore its processes from disk, reconnect, re-attach them. */
  private async restoreNow(rec: SandboxRecord, opts: WakeOptions): Promise<void> {
    const id = rec.id;
    const runtime = this.host.runtime;
    if (!runtime.restore) throw new ConflictError(`the ${runtime.kind} backend cannot restore sandboxes`, { id });
    opts.beforeStart?.(rec);
    this.claim(id, ['hibernated'], 'restoring', 'resume');
    let conn: AgentConnection;
    try {
      await runtime.restore(id);
      conn = await this.host.connect(id);
      await this.host.networkBack?.(id, conn);
    } catch (err) {
      this.host.dropConnection(id);
      const info = await runtime.inspect(id).catch(() => ({ status: 'missing' as const }));
      if (info.status === 'hibernated') this.host.store.transition(id, ['restoring'], 'hibernated');
      else void this.host.end(id, 'failed', `restore failed: ${(err as Error).message}`.slice(0, 2000));
      throw err;
    }
    this.finish(id, 'restoring', 'running', { expiresAt: Date.now() + lifetimeAtWake(rec.remainingMs, rec.timeoutMs, opts.timeoutMs) });
    this.noteWake(rec);
    this.unadopted.delete(id);
    try {
      await this.host.adopt(id, conn);
    } catch (err) {
      this.host.log.warn({ id, err: String(err) }, 're-attaching the processes of a restored sandbox failed');
    }
    this.host.log.info({ id }, 'sandbox restored');
  }

  private async startNow(id: string, opts: WakeOptions): Promise<void> {
    const rec = this.record(id);
    if (rec.state === 'running') return;
    requireState(id, rec.state, 'start', 'start', rec.endReason);
    requireCapability(backendOf(this.host.runtime, id), 'stop', 'start the sandbox');
    opts.beforeStart?.(rec);
    this.claim(id, ['stopped'], 'starting', 'start');
    try {
      await this.host.runtime.start(id);
      // Running means usable: the agent answers, and its egress works, before the sandbox says so.
      const conn = await this.host.connect(id);
      await this.host.networkBack?.(id, conn);
    } catch (err) {
      this.host.dropConnection(id);
      await this.host.runtime.stop(id).catch((e: unknown) => this.host.log.error({ id, err: String(e) }, 'cleanup after a failed start failed'));
      // Back to sleep, with the retention deadline it had.
      this.host.store.transition(id, ['starting'], 'stopped');
      throw err;
    }
    this.finish(id, 'starting', 'running', { expiresAt: Date.now() + lifetimeAtWake(rec.remainingMs, rec.timeoutMs, opts.timeoutMs) });
    this.noteWake(rec);
    this.host.log.info({ id }, 'sandbox started');
  }

  private async snapshotNow<T>(id: string, capture: () => Promise<T>): Promise<T> {
    const rec = this.record(id);
    requireState(id, rec.state, 'snapshot', 'snapshot', rec.endReason);
    requireCapability(backendOf(this.host.runtime, id), 'snapshot', 'snapshot the sandbox');
    if (rec.state === 'paused') return capture();
    this.claim(id, ['running'], 'snapshotting', 'snapshot');
    let result: T;
    try {
      result = await capture();
    } catch (err) {
      // Still running (capture thawed what it froze), unless a kill won meanwhile.
      this.host.store.transition(id, ['snapshotting'], 'running');
      throw err;
    }
    this.finish(id, 'snapshotting', 'running', {});
    return result;
  }

  private async adoptNow(id: string): Promise<void> {
    try {
      await this.host.adopt(id, await this.host.connect(id));
    } catch (err) {
      // Commands still work (use() connects again); only the re-attachment of old processes was lost.
      this.host.log.warn({ id, err: String(err) }, 're-attaching the processes of a resumed sandbox failed');
    }
  }

  private noteWake(rec: SandboxRecord): void {
    if (rec.lifecycle.idleMs !== null) this.activity.touch(rec.id);
  }

  /** The first step of a verb: a compare-and-set, or the conflict naming the state someone else left it in. */
  private claim(id: string, from: SandboxState[], to: SandboxState, what: string, opts: { remainingMs?: number } = {}): void {
    const t = this.host.store.transition(id, from, to, opts);
    if (!t.ok) {
      const now = this.host.store.get(id);
      throw wrongState(id, t.current ?? 'killed', what, now?.endReason);
    }
  }

  /** The last step: fails only when the sandbox was ended meanwhile (its kill then removes it). */
  private finish(id: string, from: SandboxState, to: SandboxState, opts: { expiresAt?: number }): void {
    if (!this.host.store.transition(id, [from], to, opts).ok) throw this.lost(id, to);
  }

  private lost(id: string, wanted: SandboxState): ConflictError {
    const rec = this.host.store.get(id);
    const why = rec?.endReason ? ` (${rec.endReason})` : '';
    return new ConflictError(`sandbox ${id} was ${rec?.state ?? 'removed'} before it was ${wanted}${why}`, { id, state: rec?.state });
  }

  /** Runs `fn` once every earlier operation on `id` has finished. */
  private serial<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const before = this.ops.get(id);
    const run = before ? before.then(fn, fn) : fn();
    const tracked: Promise<unknown> = run.finally(() => {
      if (this.ops.get(id) === tracked) this.ops.delete(id);
    });
    tracked.catch(() => undefined);
    this.ops.set(id, tracked);
    return run;
  }

  // --- automatic policies ------------------------------------------------------------

  /**
   * One pass of the reaper: running sandboxes whose timeout passed or that sat
   * idle get their onTimeout (kill, pause or stop), paused and stopped ones past
   * retention are deleted.
   */
  async tick(now = Date.now()): Promise<void> {
    const { store } = this.host;
    const due = new Map<string, 'timeout' | 'idle'>();
    for (const id of store.expiredRunning(now)) due.set(id, 'timeout');
    for (const [id, a] of this.activity.entries()) {
      if (due.has(id)) continue;
      const rec = store.get(id);
      if (!rec || isTerminal(rec.state)) this.activity.forget(id);
      if (!rec || rec.state !== 'running') continue;
      const why = dueReason(rec, a.last, a.busy, now);
      if (why) due.set(id, why);
    }
    for (const [id, why] of due) await this.act(id, why);
    for (const id of store.expiredAsleep(now)) {
      const rec = store.get(id);
      if (!rec) continue;
      await this.host.end(id, 'expired', `kept ${rec.state} for ${fmtMs(rec.lifecycle.deleteAfterMs)} (lifecycle.deleteAfterMs) and deleted`);
    }
  }

  /** Apply a running sandbox's onTimeout; a pause or stop that fails falls back to the kill it replaces. */
  private async act(id: string, why: 'timeout' | 'idle'): Promise<void> {
    const rec = this.host.store.get(id);
    if (!rec || rec.state !== 'running') return;
    const reason = why === 'timeout' ? 'timeout passed' : `idle for ${fmtMs(rec.lifecycle.idleMs ?? 0)} (lifecycle.idleMs)`;
    const action = rec.lifecycle.onTimeout;
    if (action === 'kill') return this.host.end(id, 'expired', reason);
    try {
      await (action === 'pause' ? this.pause(id) : action === 'hibernate' ? this.hibernate(id) : this.stop(id));
      this.host.log.info({ id, why, action }, `sandbox ${action === 'pause' ? 'paused' : action === 'hibernate' ? 'hibernated' : 'stopped'} by its lifecycle policy`);
    } catch (err) {
      this.host.log.warn({ id, err: String(err) }, `${reason}, and ${action} failed: ending the sandbox`);
      if (this.host.store.get(id)?.state === 'running') await this.host.end(id, 'expired', `${reason}; ${action} failed: ${(err as Error).message}`.slice(0, 2000));
    }
  }

  // --- after a restart ------------------------------------------------------------------

  /**
   * A row that was not simply running when the daemon went away: bring it to a
   * resting state that matches what the runtime holds. Paused stays paused
   * (its agent untouched), stopped stays stopped, an operation cut short is
   * finished or undone, and a paused sandbox whose container is gone but whose
   * disk is kept (a host reboot) comes back stopped.
   */
  async recover(rec: SandboxRecord): Promise<Recovered> {
    const { runtime, store, log } = this.host;
    const id = rec.id;
    const fail = async (why: string): Promise<Recovered> => {
      await this.host.end(id, 'failed', why);
      return 'ended';
    };
    const info = await runtime.inspect(id).catch(() => ({ status: 'missing' as const }));
    // What its own backend can do (runtime/backends.ts): a gVisor sandbox cannot be kept stopped.
    const backend = backendOf(runtime, id);
    const asleep = { expiresAt: Date.now() + rec.lifecycle.deleteAfterMs };
    const toStopped = async (from: 'paused' | 'stopped' | 'stopping' | 'starting' | 'hibernated'): Promise<Recovered> => {
      if (!backend.capabilities.stop) return fail(`daemon restarted while the sandbox was ${rec.state}, and the ${backend.kind} backend cannot keep it stopped`);
      try {
        await runtime.stop(id);
      } catch (err) {
        return fail(`could not stop it after a daemon restart: ${(err as Error).message}`.slice(0, 2000));
      }
      // A half-made start goes back to the retention deadline it had; the others start theirs now.
      const steps: SandboxState[] = from === 'paused' || from === 'hibernated' ? ['stopping', 'stopped'] : from === 'stopped' ? [] : ['stopped'];
      let at: SandboxState = from;
      for (const next of steps) {
        if (!store.transition(id, [at], next, next === 'stopped' && from !== 'starting' ? asleep : {}).ok) return 'ended';
        at = next;
      }
      return 'kept';
    };
    switch (rec.state) {
      case 'paused':
        if (info.status === 'paused') break;
        if (info.status === 'running') {
          // Someone thawed it behind our back: the row is the truth.
          await runtime.pause(id).catch((err: unknown) => log.warn({ id, err: String(err) }, 'could not freeze a paused sandbox again'));
          break;
        }
        if (info.status === 'stopped') {
          log.warn({ id }, 'a paused sandbox lost its processes (host reboot?); its disk is kept: it is stopped now');
          return toStopped('paused');
        }
        return fail('its container was gone when the daemon started');
      case 'stopped':
        if (info.status === 'missing') return fail('its disk was gone when the daemon started');
        if (info.status === 'stopped' && backend.capabilities.stop) return 'kept';
        return toStopped('stopped');
      case 'pausing':
      case 'resuming':
        if (info.status === 'paused') {
          store.transition(id, [rec.state], 'paused', asleep);
          break;
        }
        if (info.status === 'running') {
          store.transition(id, [rec.state], 'running', { expiresAt: Date.now() + lifetimeAtWake(rec.remainingMs, rec.timeoutMs) });
          return 'running';
        }
        return fail(`daemon restarted while the sandbox was ${rec.state}, and its container was gone`);
      case 'snapshotting':
        // Cut off while copying its files: the copy's draft is gone (LayerStore.recover); thaw what it froze.
        if (info.status === 'paused') await runtime.resume(id).catch((err: unknown) => log.warn({ id, err: String(err) }, 'could not thaw a sandbox cut off while snapshotting'));
        if (info.status === 'paused' || info.status === 'running') {
          store.transition(id, ['snapshotting'], 'running');
          return 'running';
        }
        return fail('daemon restarted while the sandbox was snapshotting, and its container was gone');
      case 'stopping':
        return toStopped('stopping');
      // Hibernated mirrors stopped: its images and disk are kept, nothing runs, nothing is connected.
      case 'hibernated':
        if (info.status === 'hibernated') return 'kept';
        if (info.status === 'stopped') {
          log.warn({ id }, 'a hibernated sandbox lost its memory image; its disk is kept: it is stopped now');
          return toStopped('hibernated');
        }
        return fail(`its memory image or disk was gone when the daemon started (${info.status})`);
      case 'hibernating':
        if (info.status === 'hibernated') {
          store.transition(id, ['hibernating'], 'hibernated', asleep);
          return 'kept';
        }
        if (info.status === 'running') {
          store.transition(id, ['hibernating'], 'running', { expiresAt: Date.now() + lifetimeAtWake(rec.remainingMs, rec.timeoutMs) });
          return 'running';
        }
        return fail(`daemon restarted while the sandbox was hibernating, and no complete image was left (${info.status})`);
      case 'restoring':
        if (info.status === 'running') {
          store.transition(id, ['restoring'], 'running', { expiresAt: Date.now() + lifetimeAtWake(rec.remainingMs, rec.timeoutMs) });
          return 'running';
        }
        if (info.status === 'hibernated') {
          store.transition(id, ['restoring'], 'hibernated');
          return 'kept';
        }
        return fail(`daemon restarted while the sandbox was restoring, and it was ${info.status}`);
      case 'starting':
        // Half started: back to stopped (the next start boots it cleanly).
        return toStopped('starting');
      default:
        return fail(`daemon restarted while the sandbox was ${rec.state === 'creating' ? 'being created' : rec.state}`);
    }
    this.unadopted.add(id);
    return 'kept';
  }
}
