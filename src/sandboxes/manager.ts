/**
 * The sandbox service: lifecycle of sandboxes (create, find, extend, kill,
 * expire) and re-adoption after a daemon restart. Transports call this; it
 * calls the runtime driver and the agent; it never knows about HTTP.
 */
import type { DaemonConfig, ResourceLimits } from '../config/index.js';
import type { RuntimeDriver } from '../runtime/types.js';
import type { AgentConnection, AgentEndpoint } from '../agent/types.js';
import type { BuildProgress } from '../templates/types.js';
import { CapsuleError, ConflictError, InvalidArgumentError, NotFoundError, SandboxError, isCapsuleError } from '../errors/index.js';
import type { SandboxRecord, SandboxStore, SandboxStateName } from './store.js';
import { newSandboxId } from './ids.js';
import type { Claimed, PoolStats, WarmPool } from './pool.js';

export interface Logger {
  info(obj: unknown, msg?: string): void;
  warn(obj: unknown, msg?: string): void;
  error(obj: unknown, msg?: string): void;
}

/** What the manager needs from the template service. */
export interface TemplateProvider {
  ensure(name: string, onProgress?: (p: BuildProgress) => void, signal?: AbortSignal): Promise<string>;
}

export type AgentConnector = (endpoint: AgentEndpoint, opts?: { timeoutMs?: number; signal?: AbortSignal; sandboxId?: string }) => Promise<AgentConnection>;

export interface CreateOptions {
  template: string;
  timeoutMs?: number | undefined;
  envs?: Record<string, string> | undefined;
  metadata?: Record<string, string> | undefined;
  resources?: Partial<ResourceLimits> | undefined;
  owner?: string | null;
  /** Quotas of the caller's key, checked against its owner's live sandboxes. */
  limits?: { maxSandboxes: number | null; maxMemoryMb: number | null } | undefined;
  signal?: AbortSignal;
}

export interface ListFilter {
  state?: SandboxStateName | 'all';
  metadata?: Record<string, string>;
  owner?: string | null;
}

/** Listeners the command service registers to learn about sandbox ends and new connections. */
export interface SandboxEvents {
  onEnded(id: string): void;
  onAdopted(id: string, conn: AgentConnection): Promise<void>;
}

const LIVE_STATES: readonly SandboxStateName[] = ['creating', 'running'];

export class SandboxManager {
  private readonly connections = new Map<string, Promise<AgentConnection>>();
  private readonly ending = new Map<string, Promise<void>>();
  private reaper: NodeJS.Timeout | undefined;
  private events: SandboxEvents | undefined;
  private afterDestroy: (() => void) | undefined;

  constructor(
    private readonly config: DaemonConfig,
    private readonly store: SandboxStore,
    private readonly runtime: RuntimeDriver,
    private readonly templates: TemplateProvider,
    private readonly connectAgent: AgentConnector,
    private readonly log: Logger,
    /** Started sandboxes to claim instead of starting one per create; null = no pools. */
    private readonly pool: WarmPool | null = null,
  ) {}

  setEvents(events: SandboxEvents): void {
    this.events = events;
  }

  /** Called after each sandbox's container and writable layer are gone (e.g. to prune replaced template trees). */
  onDestroyed(fn: () => void): void {
    this.afterDestroy = fn;
  }

  async create(opts: CreateOptions): Promise<SandboxRecord> {
    const timeoutMs = this.checkTimeout(opts.timeoutMs ?? this.config.defaultTimeoutMs);
    const resources: ResourceLimits = { ...this.config.defaultResources, ...stripUndefined(opts.resources ?? {}) };
    this.checkDisk(resources.diskMb);
    this.pool?.userCreateStarted();
    try {
      const rootfs = await this.templates.ensure(opts.template, undefined, opts.signal);
      // Refused before a pooled sandbox is spent on it; checked again below, next to the insert.
      if (opts.limits) this.checkQuota(opts.owner ?? null, resources.memoryMb, opts.limits);
      const claimed = this.pool ? await this.pool.claim(opts.template, resources) : null;
      if (claimed) return this.recordClaimed(claimed, opts, resources, timeoutMs);
      return await this.createCold(opts, rootfs, resources, timeoutMs);
    } finally {
      this.pool?.userCreateEnded();
    }
  }

  /** A pooled sandbox becomes the caller's: its record is written now, with the caller's owner, envs, metadata and clock. */
  private recordClaimed(claimed: Claimed, opts: CreateOptions, resources: ResourceLimits, timeoutMs: number): SandboxRecord {
    try {
      // Checked and recorded without an await in between, so concurrent creates cannot both slip under a quota.
      if (opts.limits) this.checkQuota(opts.owner ?? null, resources.memoryMb, opts.limits);
    } catch (err) {
      claimed.conn.close();
      void this.runtime.destroy(claimed.id).catch((e: unknown) => this.log.error({ err: e, id: claimed.id }, 'cleanup of a claimed sandbox failed'));
      throw err;
    }
    // The clock starts at the claim, not when the pool started the container.
    const rec = newRecord(claimed.id, 'running', opts, resources, timeoutMs);
    this.store.insert(rec);
    this.adoptConnection(claimed.id, claimed.conn);
    return rec;
  }

  private async createCold(opts: CreateOptions, rootfs: string, resources: ResourceLimits, timeoutMs: number): Promise<SandboxRecord> {
    // Checked and recorded without an await in between, so concurrent creates cannot both slip under a quota.
    if (opts.limits) this.checkQuota(opts.owner ?? null, resources.memoryMb, opts.limits);
    const rec = newRecord(newSandboxId(), 'creating', opts, resources, timeoutMs);
    this.store.insert(rec);
    try {
      await this.runtime.create({ id: rec.id, templateRootfs: rootfs, resources }, opts.signal);
      await this.connection(rec.id);
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      this.store.end(rec.id, 'failed', `create failed: ${reason}`.slice(0, 2000), Date.now());
      await this.runtime.destroy(rec.id).catch((e: unknown) => this.log.error({ err: e, id: rec.id }, 'cleanup after failed create'));
      throw err;
    }
    // The clock starts when the sandbox is usable, not when the request came in.
    rec.expiresAt = Date.now() + timeoutMs;
    this.store.setExpiry(rec.id, rec.expiresAt);
    this.store.setState(rec.id, 'running');
    rec.state = 'running';
    return rec;
  }

  /** Warm pool state, per template (empty when no pool is configured). */
  poolStats(): PoolStats[] {
    return this.pool?.stats() ?? [];
  }

  /** Any sandbox this caller may see, live or ended. */
  get(id: string, owner?: string | null): SandboxRecord {
    const rec = this.store.get(id);
    if (!rec || (owner !== undefined && owner !== null && rec.owner !== owner)) {
      throw new NotFoundError(`sandbox ${id} not found`, { id });
    }
    return rec;
  }

  /** A sandbox that must be running for the operation to make sense. */
  getRunning(id: string, owner?: string | null): SandboxRecord {
    const rec = this.get(id, owner);
    if (rec.state !== 'running') {
      throw new ConflictError(`sandbox ${id} is ${rec.state}${rec.endReason ? ` (${rec.endReason})` : ''}`, { id, state: rec.state });
    }
    return rec;
  }

  list(filter: ListFilter = {}): SandboxRecord[] {
    const recs =
      filter.state === 'all' ? this.store.listAll() : this.store.listByStates(filter.state ? [filter.state] : LIVE_STATES);
    return recs.filter((r) => {
      if (filter.owner !== undefined && filter.owner !== null && r.owner !== filter.owner) return false;
      for (const [k, v] of Object.entries(filter.metadata ?? {})) if (r.metadata[k] !== v) return false;
      return true;
    });
  }

  setTimeout(id: string, timeoutMs: number, owner?: string | null): SandboxRecord {
    const rec = this.getRunning(id, owner);
    rec.expiresAt = Date.now() + this.checkTimeout(timeoutMs);
    this.store.setExpiry(id, rec.expiresAt);
    return rec;
  }

  async kill(id: string, owner?: string | null): Promise<SandboxRecord> {
    const rec = this.get(id, owner);
    if (rec.state === 'running' || rec.state === 'creating') await this.end(id, 'killed', 'killed by request');
    return this.get(id, owner);
  }

  /** The live agent connection of a running sandbox, reconnecting when it was lost. */
  connection(id: string): Promise<AgentConnection> {
    let p = this.connections.get(id);
    if (!p) {
      p = this.connectAgent(this.runtime.agentEndpoint(id), { timeoutMs: 5000, sandboxId: id }).then(
        (conn) => this.watch(id, conn, p!),
        (err: unknown) => {
          this.connections.delete(id);
          void this.checkAlive(id);
          throw isCapsuleError(err)
            ? err
            : new SandboxError(`sandbox ${id}: agent not reachable: ${err instanceof Error ? err.message : String(err)}`, { id });
        },
      );
      this.connections.set(id, p);
    }
    return p;
  }

  /** Take over a connection made by someone else (the warm pool) as the sandbox's live one. */
  private adoptConnection(id: string, conn: AgentConnection): void {
    const p = Promise.resolve(conn);
    this.connections.set(id, p);
    this.watch(id, conn, p);
  }

  private watch(id: string, conn: AgentConnection, p: Promise<AgentConnection>): AgentConnection {
    conn.onClose((err) => {
      if (this.connections.get(id) === p) this.connections.delete(id);
      // Lost, not closed by us: the agent (the sandbox's init) may have died, e.g. OOM-killed.
      if (err) void this.checkAlive(id);
    });
    return conn;
  }

  /**
   * Ends a running sandbox whose container is gone, so it is not reported as running while unusable.
   * The agent's socket closes early in its exit, before the pid namespace and mounts are torn down,
   * so the runtime can still say "running" for a moment: look a few times before believing it.
   */
  private async checkAlive(id: string): Promise<void> {
    const attempts = 7;
    for (let attempt = 0; attempt < attempts; attempt++) {
      const rec = this.store.get(id);
      if (!rec || rec.state !== 'running' || this.ending.has(id)) return;
      const info = await this.runtime.inspect(id).catch(() => ({ status: 'missing' as const }));
      if (info.status !== 'running') {
        await this.end(id, 'failed', `the sandbox's init process died (container ${info.status})`);
        return;
      }
      // 25 ms doubling: about 1.6 s in all. Unref'd: a pending check never holds a stopping daemon.
      if (attempt < attempts - 1) await new Promise((r) => setTimeout(r, 25 * 2 ** attempt).unref());
    }
  }

  /** OOM kills so far in the sandbox's memory cgroup, to tell an OOM death from other SIGKILLs. */
  oomKills(id: string): Promise<number> {
    return this.runtime.oomKills(id).catch(() => 0);
  }

  /** Ends a sandbox once, whatever the reason; concurrent callers share the work. */
  end(id: string, state: 'killed' | 'expired' | 'failed', reason: string): Promise<void> {
    const running = this.ending.get(id);
    if (running) return running;
    const work = (async () => {
      this.store.end(id, state, reason, Date.now());
      const conn = this.connections.get(id);
      this.connections.delete(id);
      conn?.then((c) => c.close(), () => undefined);
      this.events?.onEnded(id);
      try {
        await this.runtime.destroy(id);
        this.afterDestroy?.();
      } catch (err) {
        // Leftovers are retried at the next start (recover); the sandbox is ended either way.
        this.log.error({ err, id }, 'destroying sandbox failed');
      }
      this.log.info({ id, state, reason }, 'sandbox ended');
    })().finally(() => this.ending.delete(id));
    this.ending.set(id, work);
    return work;
  }

  startReaper(): void {
    if (this.reaper) return;
    this.reaper = setInterval(() => void this.reapExpired(), this.config.reapIntervalMs);
    this.reaper.unref();
  }

  async reapExpired(now = Date.now()): Promise<void> {
    for (const id of this.store.expiredRunning(now)) {
      await this.end(id, 'expired', 'timeout passed');
    }
  }

  /**
   * After a (re)start: adopt sandboxes whose containers still run, end the ones
   * that died or were half-made, and remove runtime leftovers nobody owns.
   */
  async recover(): Promise<{ adopted: string[]; ended: string[]; cleaned: string[] }> {
    const adopted: string[] = [];
    const ended: string[] = [];
    for (const rec of this.store.listByStates(LIVE_STATES)) {
      if (rec.state === 'creating') {
        await this.end(rec.id, 'failed', 'daemon restarted while the sandbox was being created');
        ended.push(rec.id);
        continue;
      }
      const info = await this.runtime.inspect(rec.id).catch(() => ({ status: 'missing' as const }));
      if (info.status !== 'running') {
        await this.end(rec.id, 'failed', `container was ${info.status} when the daemon started`);
        ended.push(rec.id);
        continue;
      }
      try {
        const conn = await this.connection(rec.id);
        await this.events?.onAdopted(rec.id, conn);
        adopted.push(rec.id);
      } catch (err) {
        this.log.warn({ err, id: rec.id }, 'could not reach the agent of a running sandbox');
        await this.end(rec.id, 'failed', `agent unreachable after daemon restart: ${err instanceof Error ? err.message : String(err)}`.slice(0, 2000));
        ended.push(rec.id);
      }
    }
    const live = new Set(adopted);
    const cleaned: string[] = [];
    const known = new Set([...(await this.runtime.list()), ...(await this.runtime.listLeftovers())]);
    for (const id of known) {
      if (live.has(id)) continue;
      await this.runtime.destroy(id).catch((err: unknown) => this.log.error({ err, id }, 'cleanup of leftover failed'));
      cleaned.push(id);
    }
    return { adopted, ended, cleaned };
  }

  /** Stop timers and connections; sandboxes keep running (they are re-adopted at next start). */
  async close(): Promise<void> {
    if (this.reaper) clearInterval(this.reaper);
    this.reaper = undefined;
    await Promise.allSettled([...this.ending.values()]);
    for (const p of this.connections.values()) p.then((c) => c.close(), () => undefined);
    this.connections.clear();
  }

  private checkQuota(owner: string | null, memoryMb: number, limits: NonNullable<CreateOptions['limits']>): void {
    const live = this.list({ owner });
    if (limits.maxSandboxes !== null && live.length >= limits.maxSandboxes) {
      throw new CapsuleError('rate_limited', `quota reached: ${live.length} of ${limits.maxSandboxes} live sandboxes; kill one first`, {
        maxSandboxes: limits.maxSandboxes,
      });
    }
    const used = live.reduce((sum, r) => sum + r.resources.memoryMb, 0);
    if (limits.maxMemoryMb !== null && used + memoryMb > limits.maxMemoryMb) {
      throw new CapsuleError('rate_limited', `quota reached: ${used} MiB of ${limits.maxMemoryMb} MiB in use, ${memoryMb} MiB more asked`, {
        maxMemoryMb: limits.maxMemoryMb,
      });
    }
  }

  /** The schema bounds what any daemon accepts; this is the operator's own ceiling. */
  private checkDisk(mb: number): void {
    if (!Number.isInteger(mb) || mb < 16) throw new InvalidArgumentError('resources.diskMb must be an integer of at least 16');
    if (mb > this.config.maxDiskMb) {
      throw new InvalidArgumentError(`resources.diskMb must be at most ${this.config.maxDiskMb} on this daemon (CAPSULE_MAX_DISK_MB)`, {
        max: this.config.maxDiskMb,
      });
    }
  }

  private checkTimeout(ms: number): number {
    if (!Number.isInteger(ms) || ms < 1000) throw new InvalidArgumentError('timeoutMs must be an integer of at least 1000');
    if (ms > this.config.maxTimeoutMs) {
      throw new InvalidArgumentError(`timeoutMs must be at most ${this.config.maxTimeoutMs}`, { max: this.config.maxTimeoutMs });
    }
    return ms;
  }
}

/** A new sandbox's row: the caller's template, owner, envs and metadata, its clock starting now. */
function newRecord(
  id: string,
  state: 'creating' | 'running',
  opts: CreateOptions,
  resources: ResourceLimits,
  timeoutMs: number,
): SandboxRecord {
  const now = Date.now();
  return {
    id,
    template: opts.template,
    state,
    owner: opts.owner ?? null,
    createdAt: now,
    expiresAt: now + timeoutMs,
    envs: opts.envs ?? {},
    metadata: opts.metadata ?? {},
    resources,
    endedAt: null,
    endReason: null,
  };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
