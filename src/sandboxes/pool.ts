/**
 * Warm pools: per template and isolation, a few sandboxes started ahead of
 * time, so a create can claim one instead of paying for the start (~30 ms of
 * runtime work on two cores for a container, ~200 ms for gVisor). A pool
 * setting names a template (the daemon's default isolation) or
 * `<template>:<isolation>`; a create claims only from the pool of its own
 * template and isolation.
 *
 * A pooled container is started exactly as a fresh sandbox (same bundle,
 * daemon-default limits, an id from newSandboxId that nobody has seen), and
 * nothing runs in it while it waits: only the agent, with an open, idle
 * connection. It lives in this object's memory only, never in the store, so
 * it is never listed and never counted in a quota; after a daemon restart it
 * is an orphan that recover() removes. The sandbox service claims one,
 * changes its cgroup limits where the request differs (pool-fit.ts decides
 * what can change), and only then writes its record with the caller's owner,
 * envs, metadata and timeout.
 *
 * Refills start one container at a time, and only while no user create is in
 * flight, so they never compete with a request for the runtime and the CPUs
 * more than one container start.
 */
import { splitPoolKey, type ResourceLimits } from '../config/index.js';
import { backendFor, backendOf } from '../runtime/backends.js';
import type { Isolation } from '../runtime/isolation.js';
import type { AgentConnection } from '../agent/types.js';
import type { LayerRef, RuntimeDriver } from '../runtime/types.js';
import { containerSpec } from './spec.js';
import type { TemplateInfo } from '../templates/types.js';
import { newSandboxId } from './ids.js';
import { poolFit } from './pool-fit.js';
import type { AgentConnector, Logger } from './manager.js';

/** What the pool needs from the template service. */
export interface PoolTemplates {
  get(name: string): TemplateInfo;
  layers(name: string): Promise<readonly LayerRef[]>;
  /** Whether the template's sandboxes need setuid programs to work (base's sudo). */
  config(name: string): { sudo?: boolean };
}

export interface WarmPoolDeps {
  runtime: RuntimeDriver;
  templates: PoolTemplates;
  connectAgent: AgentConnector;
  /** Limits a pooled container starts with: those of a create that asks for nothing. */
  defaultResources: ResourceLimits;
  log: Logger;
  /** Build a pool's template when it is missing or failed, instead of waiting for a create to build it. */
  buildTemplates: boolean;
  /** How often the pool looks for work without being told (template became ready, a retry is due). */
  tickMs?: number;
  /** Quiet time after the last user create before a refill starts (default 100 ms). */
  quietMs?: number;
}

/** A started, unclaimed sandbox. */
interface Pooled {
  id: string;
  /** Its pool: `<template>:<isolation>`. */
  key: string;
  template: string;
  /** Build of the template it was started from: a rebuilt template makes it stale. */
  builtAt: number | undefined;
  /** The layers it was started on (its row records them: a snapshot of it builds on them). */
  layers: readonly LayerRef[];
  resources: ResourceLimits;
  conn: AgentConnection;
  /** The agent connection dropped (the container died while pooled). */
  lost: boolean;
}

export interface Claimed {
  id: string;
  conn: AgentConnection;
  layers: readonly LayerRef[];
}

export interface PoolStats {
  template: string;
  /** The isolation of the pool's sandboxes. */
  isolation: Isolation;
  /** Configured size. */
  size: number;
  /** Started sandboxes waiting to be claimed. */
  ready: number;
  /** A container for this pool is being started now. */
  starting: boolean;
  /** Creates served from the pool since the daemon started. */
  claims: number;
  /** Creates that found no fitting pooled sandbox (empty pool or limits it cannot apply). */
  misses: number;
  /** Claims that failed (the pooled sandbox had died, or its limits could not be changed) and went cold. */
  fallbacks: number;
  /** Pooled sandboxes that died while waiting and were replaced. */
  lost: number;
  /** Containers the pool started. */
  started: number;
  /** Pool starts that failed; `lastError` says why. */
  startFailures: number;
  lastError?: string;
}

type Counters = Omit<PoolStats, 'template' | 'isolation' | 'size' | 'ready' | 'starting'>;

const MAX_BACKOFF_MS = 60_000;
/** An idle agent answers a ping in well under a millisecond; this only bounds a hung one. */
const CLAIM_PING_TIMEOUT_MS = 1000;

export class WarmPool {
  private readonly sizes: Map<string, number>;
  private readonly ready = new Map<string, Pooled[]>();
  private readonly counters = new Map<string, Counters>();
  private readonly retryAt = new Map<string, { at: number; failures: number }>();
  private readonly destroying = new Set<Promise<void>>();
  private userCreates = 0;
  /** When the last user create started or ended: refills wait for a quiet moment after it. */
  private lastUserActivity = 0;
  private quietTimer: NodeJS.Timeout | undefined;
  private again = false;
  private starting: string | undefined;
  private filling: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    sizes: Record<string, number>,
    private readonly deps: WarmPoolDeps,
  ) {
    // Keys as the settings give them (`debian`, `busybox:gvisor`), made explicit: `<template>:<isolation>`.
    const normalized = new Map<string, number>();
    for (const [key, n] of Object.entries(sizes)) normalized.set(this.keyOf(key), n);
    this.sizes = new Map([...normalized].filter(([, n]) => n > 0));
    for (const t of this.sizes.keys()) {
      this.ready.set(t, []);
      this.counters.set(t, { claims: 0, misses: 0, fallbacks: 0, lost: 0, started: 0, startFailures: 0 });
    }
  }

  /** `<template>:<isolation>` of a pool setting's key (`debian` is the default isolation's). */
  private keyOf(setting: string): string {
    const { template, isolation } = splitPoolKey(setting);
    return `${template}:${isolation ?? this.deps.runtime.capabilities.isolation}`;
  }

  /** Begin filling, and look again every tick for work nobody announced. */
  start(): void {
    if (this.sizes.size === 0 || this.timer || this.closed) return;
    this.timer = setInterval(() => this.kick(), this.deps.tickMs ?? 2000);
    this.timer.unref();
    this.kick();
  }

  /** The sandbox service brackets every user create with these, so refills wait for quiet. */
  userCreateStarted(): void {
    this.userCreates++;
    this.lastUserActivity = performance.now();
  }

  userCreateEnded(): void {
    this.userCreates--;
    this.lastUserActivity = performance.now();
    if (this.userCreates === 0) this.kick();
  }

  /**
   * A refill is itself a container start: under a steady stream of user creates,
   * slipping one into every short gap between them slowed those creates by ~20%
   * (measured at concurrency 4). So a refill waits until no user create has
   * started or ended for `quietMs`.
   */
  private quietFor(): number {
    return this.deps.quietMs ?? 100;
  }

  /**
   * Take a pooled sandbox of `template` and `isolation` (default: the
   * daemon's) that can be given `resources`, with those limits applied.
   * null = none fits or the claim failed: the caller makes a cold one (the
   * reason is counted and logged here).
   */
  async claim(template: string, resources: ResourceLimits, isolation?: Isolation): Promise<Claimed | null> {
    const key = this.keyOf(isolation ? `${template}:${isolation}` : template);
    const list = this.ready.get(key);
    const c = this.counters.get(key);
    if (!list || !c) return null;
    const builtAt = this.currentBuild(template);
    this.dropStale(key, builtAt);
    const e = list[0];
    if (!e) {
      c.misses++;
      this.kick();
      return null;
    }
    const fit = poolFit(e.resources, resources, backendOf(this.deps.runtime, e.id).capabilities.updateResources);
    if (!fit.ok) {
      // Every entry was started with the same limits: none fits. Keep them for the next request.
      c.misses++;
      this.deps.log.info({ template, pool: e.key, reason: fit.reason }, 'warm pool cannot serve these limits: cold create');
      return null;
    }
    list.shift();
    try {
      // A ping proves the agent still answers: a container killed a moment ago may not have
      // closed its connection yet, and handing it out would fail the caller's first command.
      await Promise.all([
        Object.keys(fit.update).length > 0 ? this.deps.runtime.update(e.id, fit.update) : undefined,
        withTimeout(e.conn.ping(), CLAIM_PING_TIMEOUT_MS, 'its agent did not answer a ping'),
      ]);
      if (e.lost) throw new Error('its agent connection dropped while it was pooled');
    } catch (err) {
      c.fallbacks++;
      this.deps.log.warn({ template, id: e.id, err: errMessage(err) }, 'claiming a pooled sandbox failed: cold create instead');
      this.discard(e);
      this.kick();
      return null;
    }
    c.claims++;
    this.kick();
    return { id: e.id, conn: e.conn, layers: e.layers };
  }

  stats(): PoolStats[] {
    return [...this.sizes].map(([key, size]) => {
      const { template, isolation } = splitPoolKey(key);
      return {
        template,
        isolation: isolation!,
        size,
        ready: this.ready.get(key)?.length ?? 0,
        starting: this.starting === key,
        ...this.counters.get(key)!,
      };
    });
  }

  /** Stop refilling and destroy every pooled container (a graceful daemon stop). */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.quietTimer) clearTimeout(this.quietTimer);
    this.quietTimer = undefined;
    await this.filling;
    for (const list of this.ready.values()) for (const e of list.splice(0)) this.discard(e);
    await Promise.allSettled([...this.destroying]);
  }

  private kick(): void {
    if (this.closed || this.filling || this.userCreates > 0) return;
    const wait = this.lastUserActivity + this.quietFor() - performance.now();
    if (wait > 0) {
      if (!this.quietTimer) {
        this.quietTimer = setTimeout(() => {
          this.quietTimer = undefined;
          this.kick();
        }, wait + 1);
        this.quietTimer.unref();
      }
      return;
    }
    this.filling = this.refill().finally(() => {
      this.filling = undefined;
      if (this.again) {
        this.again = false;
        this.kick();
      }
    });
  }

  /** One container at a time, re-checking between starts that no user create arrived. */
  private async refill(): Promise<void> {
    for (;;) {
      if (this.closed || this.userCreates > 0) return;
      if (performance.now() - this.lastUserActivity < this.quietFor()) {
        this.again = true; // kicked again once `filling` clears, which then waits out the window
        return;
      }
      const key = this.nextToFill();
      if (!key) return;
      await this.fillOne(key);
    }
  }

  /** The pool furthest below its size, among those whose template is ready to be started from. */
  private nextToFill(): string | undefined {
    let best: string | undefined;
    let bestShare = 1;
    const now = Date.now();
    for (const [key, size] of this.sizes) {
      if ((this.retryAt.get(key)?.at ?? 0) > now) continue;
      const builtAt = this.currentBuild(splitPoolKey(key).template);
      if (builtAt === null) continue;
      this.dropStale(key, builtAt);
      const share = this.ready.get(key)!.length / size;
      if (share < bestShare) {
        best = key;
        bestShare = share;
      }
    }
    return best;
  }

  /**
   * builtAt of the template's current build, or null when it is not ready.
   * Without `buildTemplates` the pool waits for a create to build it; with it,
   * a missing template reads as buildable and fillOne's ensure() builds it
   * (failures back off like any failed start).
   */
  private currentBuild(template: string): number | undefined | null {
    try {
      const info = this.deps.templates.get(template);
      if (info.status === 'ready') return info.builtAt;
      return this.deps.buildTemplates && info.status !== 'building' ? undefined : null;
    } catch {
      return null;
    }
  }

  /** Pooled sandboxes of an older build than the current one are of no use: a fresh sandbox would get the new tree. */
  private dropStale(key: string, builtAt: number | undefined | null): void {
    if (builtAt === null) return;
    const list = this.ready.get(key)!;
    for (let i = list.length - 1; i >= 0; i--) {
      const e = list[i]!;
      if (e.builtAt === builtAt) continue;
      list.splice(i, 1);
      this.deps.log.info({ template: e.template, pool: key, id: e.id }, 'template was rebuilt: discarding a pooled sandbox of the old build');
      this.discard(e);
    }
  }

  private async fillOne(key: string): Promise<void> {
    const c = this.counters.get(key)!;
    const { template, isolation } = splitPoolKey(key);
    const id = newSandboxId();
    const resources = { ...this.deps.defaultResources };
    this.starting = key;
    let created = false;
    try {
      // An isolation this host lacks fails here, like any failed start (counted, retried with backoff, lastError).
      const backend = backendFor(this.deps.runtime, isolation);
      const layers = await this.deps.templates.layers(template);
      const builtAt = this.deps.templates.get(template).builtAt;
      const allowSetuid = this.deps.templates.config(template).sudo;
      const spec = containerSpec(backend, id, layers, resources, undefined, { allowSetuid });
      await this.deps.runtime.create({ ...spec, isolation: backend.capabilities.isolation });
      created = true;
      const conn = await this.deps.connectAgent(this.deps.runtime.agentEndpoint(id), { timeoutMs: 5000 });
      c.started++;
      this.retryAt.delete(key);
      const e: Pooled = { id, key, template, builtAt, layers, resources, conn, lost: false };
      conn.onClose(() => this.onLost(e));
      if (this.closed) this.discard(e);
      else this.ready.get(key)!.push(e);
    } catch (err) {
      c.startFailures++;
      c.lastError = errMessage(err).slice(0, 500);
      const failures = (this.retryAt.get(key)?.failures ?? 0) + 1;
      const wait = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** (failures - 1));
      this.retryAt.set(key, { at: Date.now() + wait, failures });
      this.deps.log.warn({ template, isolation, id, err: c.lastError, retryInMs: wait }, 'starting a pooled sandbox failed');
      if (created) this.track(this.deps.runtime.destroy(id));
    } finally {
      this.starting = undefined;
    }
  }

  /** The agent of a pooled sandbox went away: it cannot be claimed, so replace it. */
  private onLost(e: Pooled): void {
    e.lost = true;
    const list = this.ready.get(e.key);
    const i = list?.indexOf(e) ?? -1;
    if (i < 0) return; // claimed or already discarded: not the pool's any more
    list!.splice(i, 1);
    this.deps.log.warn({ template: e.template, pool: e.key, id: e.id }, 'a pooled sandbox died while waiting; replacing it');
    this.counters.get(e.key)!.lost++;
    this.discard(e);
    this.kick();
  }

  private discard(e: Pooled): void {
    e.conn.close();
    this.track(this.deps.runtime.destroy(e.id));
  }

  private track(p: Promise<void>): void {
    const t = p
      .catch((err: unknown) => this.deps.log.error({ err: errMessage(err) }, 'destroying a pooled sandbox failed; the next start removes it'))
      .finally(() => this.destroying.delete(t));
    this.destroying.add(t);
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
