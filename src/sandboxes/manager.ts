/**
 * The sandbox service: lifecycle of sandboxes (create, find, extend, kill,
 * expire) and re-adoption after a daemon restart. Transports call this with
 * the caller's RequestContext; it calls the runtime driver and the agent; it
 * never knows about HTTP.
 *
 * Every state change goes through the state machine (lifecycle.ts) as a
 * compare-and-set in the store, and the in-memory maps follow it:
 *  - `creating`: creates in flight. A kill of a creating sandbox moves it to
 *    killed, aborts the create and waits for the create's own cleanup: the
 *    create sees that it lost the race at its creating → running step and
 *    removes what it made, so a killed sandbox never comes back to life.
 *  - `connections`: agent connections of running sandboxes only.
 *  - `ending`: cleanups in flight after a move to a terminal state; a second
 *    kill waits for the first one's cleanup.
 * Pause/resume, stop/start and the automatic policies live in
 * lifecycle-service.ts; this file exposes its verbs with the caller's context,
 * and use() wakes a sandbox whose policy says autoResume.
 */
import type { DaemonConfig, ResourceLimits } from '../config/index.js';
import type { SandboxHistory } from './history.js';
import type { LayerRef, RuntimeCapabilities, RuntimeDriver } from '../runtime/types.js';
import type { AgentConnection, AgentEndpoint, FileHandoff } from '../agent/types.js';
import type { TemplateConfig } from '../schemas/templates.js';
import { canSee, ownerFor, type RequestContext } from '../auth/context.js';
import { ConflictError, InvalidArgumentError, NotFoundError, RateLimitedError, SandboxError, UnavailableError, UnsupportedError, isCapsuleError } from '../errors/index.js';
import type { SandboxRecord, SandboxStore, SandboxVolume } from './store.js';
import { LIVE_STATES, requireState, wrongState, type SandboxState, type TerminalState } from './lifecycle.js';
import { newSandboxId } from './ids.js';
import { containerSpec, requireCapability } from './spec.js';
import { SandboxLifecycle, type WakeOptions } from './lifecycle-service.js';
import { resolvePolicy, type LifecycleInput } from './policy.js';
import { backendFor, backendOf, backendsInfo, type BackendInfo } from '../runtime/backends.js';
import type { Isolation } from '../runtime/isolation.js';
import type { Claimed, PoolStats, WarmPool } from './pool.js';
import { NO_TELEMETRY, type Telemetry } from './telemetry.js';
import type { SandboxNetworking } from '../network/service.js';
import type { NetworkConfig } from '../schemas/network.js';

export interface Logger {
  info(obj: unknown, msg?: string): void;
  warn(obj: unknown, msg?: string): void;
  error(obj: unknown, msg?: string): void;
}

/** What the manager needs from the template service: a template the caller may use, as layers and config. */
export interface TemplateProvider {
  /** The template's read-only layers (lowest first) and what its commands get; builds a built-in one when needed. */
  resolve(ctx: RequestContext, name: string, signal?: AbortSignal): Promise<{ layers: readonly LayerRef[]; config: TemplateConfig }>;
}

export type AgentConnector = (endpoint: AgentEndpoint, opts?: { timeoutMs?: number; signal?: AbortSignal; sandboxId?: string }) => Promise<AgentConnection>;

export interface CreateOptions {
  /** Template to start from; default `debian` (DEFAULT_TEMPLATE). Not with `snapshot`. */
  template?: string | undefined;
  /** A filesystem snapshot (id or name) to start from: its template's layers, its files, its config. Not with `template`. */
  snapshot?: string | undefined;
  timeoutMs?: number | undefined;
  envs?: Record<string, string> | undefined;
  metadata?: Record<string, string> | undefined;
  resources?: Partial<ResourceLimits> | undefined;
  /** Which backend kind holds it (runtime/backends.ts); default: the daemon's. */
  isolation?: Isolation | undefined;
  /** What its timeout and idleness do, whether calls wake it, how long it is kept paused or stopped (policy.ts). */
  lifecycle?: LifecycleInput | undefined;
  /** The caller's named volumes to attach (src/volumes). */
  volumes?: ReadonlyArray<{ name: string; path: string; readOnly?: boolean | undefined }> | undefined;
  /** Egress policy and public ports (src/network); default: no egress. */
  network?: NetworkConfig | undefined;
  /** Aborted when the caller gives up (the client went away): nothing is left behind. */
  signal?: AbortSignal | undefined;
  /**
   * Wait at most this long for the template to be built, then fail with a
   * retryable `unavailable` error while the build goes on (MCP clients give
   * up on a tool call after about a minute; a retry joins the same build).
   */
  templateWaitMs?: number | undefined;
}

/** A create once its template is known (the default applied, or the snapshot's). */
type NamedCreate = CreateOptions & { template: string };

/** The template a create gets when it names neither a template nor a snapshot. */
export const DEFAULT_TEMPLATE = 'debian';

export interface ListFilter {
  state?: SandboxState | 'all' | undefined;
  metadata?: Record<string, string> | undefined;
}

/** A snapshot a create starts from (src/snapshots/service.ts): its template's layers and its own, and its config. */
export interface ResolvedSnapshot {
  id: string;
  /** The template it was taken on (the new sandbox's template). */
  template: string;
  layers: readonly LayerRef[];
  config: TemplateConfig;
}

/** What the manager needs from the snapshot service (src/snapshots/service.ts). */
export interface SnapshotResolver {
  /** The caller's snapshot by id or name; not found for any other. */
  resolve(ctx: RequestContext, ref: string): ResolvedSnapshot;
  /** Called in the synchronous step that writes the sandbox's row: the snapshot still exists. */
  stillThere(id: string): void;
}

/** What the manager needs from the volume service (src/volumes/service.ts). */
export interface VolumeResolver {
  /** The caller's volumes behind the names asked; not found for any other. */
  resolve(ctx: RequestContext, mounts: ReadonlyArray<{ name: string; path: string; readOnly: boolean }>): SandboxVolume[];
  /** Called in the synchronous step that writes the sandbox's row: each volume still exists. */
  stillThere(volumes: readonly SandboxVolume[]): void;
}

/** Listeners the command service registers to learn about sandbox ends and new connections. */
export interface SandboxEvents {
  /** Every process of the sandbox is gone: it ended, or it was stopped. */
  onEnded(id: string): void;
  onAdopted(id: string, conn: AgentConnection): Promise<void>;
  /** The agent connection closes with every process kept (hibernate); onAdopted follows them again. */
  onDetached?(id: string): void;
}

interface InFlightCreate {
  abort: AbortController;
  /** Resolves once the create has finished, including its cleanup when it lost. */
  settled: Promise<void>;
}

export class SandboxManager {
  private readonly connections = new Map<string, Promise<AgentConnection>>();
  /** The connections above that are made, with the promise each came from, for useNow. */
  private readonly connected = new Map<string, { p: Promise<AgentConnection>; conn: AgentConnection }>();
  private readonly creating = new Map<string, InFlightCreate>();
  private readonly ending = new Map<string, Promise<void>>();
  private reaper: NodeJS.Timeout | undefined;
  private events: SandboxEvents | undefined;
  private afterDestroy: (() => void) | undefined;
  private readonly lifecycle: SandboxLifecycle;
  private volumes: VolumeResolver | undefined;
  private snapshots: SnapshotResolver | undefined;
  private history: SandboxHistory | undefined;
  private telemetry: Telemetry = NO_TELEMETRY;
  private networking: SandboxNetworking | undefined;

  constructor(
    private readonly config: DaemonConfig,
    private readonly store: SandboxStore,
    private readonly runtime: RuntimeDriver,
    private readonly templates: TemplateProvider,
    private readonly connectAgent: AgentConnector,
    private readonly log: Logger,
    /** Started sandboxes to claim instead of starting one per create; null = no pools. */
    private readonly pool: WarmPool | null = null,
  ) {
    this.lifecycle = new SandboxLifecycle({
      store,
      runtime,
      log,
      connect: (id, signal) => this.connection(id, signal),
      dropConnection: (id) => this.dropConnection(id),
      processesGone: (id) => this.events?.onEnded(id),
      adopt: async (id, conn) => this.events?.onAdopted(id, conn),
      detach: (id) => this.events?.onDetached?.(id),
      end: (id, state, reason) => this.end(id, state, reason),
      networkBack: async (id, conn) => this.networking?.adopt(id, conn),
    });
  }

  setEvents(events: SandboxEvents): void {
    this.events = events;
  }

  setVolumes(volumes: VolumeResolver): void {
    this.volumes = volumes;
  }

  setSnapshots(snapshots: SnapshotResolver): void {
    this.snapshots = snapshots;
  }

  /** Where create counts and latencies go (the daemon's Prometheus metrics). */
  setTelemetry(telemetry: Telemetry): void {
    this.telemetry = telemetry;
  }

  /** The network service: policies hold from a sandbox's first packet, and go with it. */
  setNetworking(n: SandboxNetworking): void {
    this.networking = n;
  }

  /** Ended sandboxes' rows, logs and ledgers are deleted once past retention, from the reaper's tick. */
  setHistory(h: SandboxHistory): void {
    this.history = h;
  }

  /** Called after each sandbox's container and writable layer are gone (e.g. to prune replaced template trees). */
  onDestroyed(fn: () => void): void {
    this.afterDestroy = fn;
  }

  // --- for callers (every method takes the caller's context) ----------------------

  async create(ctx: RequestContext, opts: CreateOptions): Promise<SandboxRecord> {
    const t0 = performance.now();
    const how = { pooled: false };
    try {
      const rec = await this.createTimed(ctx, opts, how);
      this.telemetry.sandboxCreated(rec.template, (performance.now() - t0) / 1000, 'ok', how.pooled);
      return rec;
    } catch (err) {
      // No template label on failures: the name came from the caller and may not exist (unbounded labels).
      this.telemetry.sandboxCreated('', (performance.now() - t0) / 1000, 'error', how.pooled);
      throw err;
    }
  }

  private async createTimed(ctx: RequestContext, asked: CreateOptions, how: { pooled: boolean }): Promise<SandboxRecord> {
    if (asked.snapshot !== undefined && asked.template !== undefined) {
      throw new InvalidArgumentError('give template or snapshot, not both: a sandbox started from a snapshot gets the template the snapshot was taken on');
    }
    if (asked.snapshot !== undefined && !this.snapshots) throw new UnsupportedError('this daemon has no snapshot service');
    const opts = { ...asked, template: asked.template ?? DEFAULT_TEMPLATE };
    const timeoutMs = this.checkTimeout(opts.timeoutMs ?? this.config.defaultTimeoutMs);
    const resources: ResourceLimits = { ...this.config.defaultResources, ...stripUndefined(opts.resources ?? {}) };
    this.checkDisk(resources.diskMb);
    // An isolation this host lacks fails here, before a template is built for it; what the sandbox
    // asks of its backend (a timeout policy, volumes, egress) is checked against that backend.
    const backend = backendFor(this.runtime, opts.isolation);
    const onTimeout = opts.lifecycle?.onTimeout;
    if (onTimeout === 'pause') requireCapability(backend, 'pause', 'pause this sandbox when it times out');
    if (onTimeout === 'stop') requireCapability(backend, 'stop', 'stop this sandbox when it times out');
    if (onTimeout === 'hibernate') requireCapability(backend, 'memorySnapshot', 'hibernate this sandbox when it times out');
    const mounts = (opts.volumes ?? []).map((v) => ({ name: v.name, path: v.path, readOnly: v.readOnly ?? false }));
    if (mounts.length > 0 && !this.volumes) throw new UnsupportedError('this daemon has no volume service');
    if (mounts.length > 0) requireCapability(backend, 'volumes', 'attach volumes to this sandbox');
    const volumes = this.volumes?.resolve(ctx, mounts) ?? [];
    const snapshot = opts.snapshot !== undefined ? this.snapshots!.resolve(ctx, opts.snapshot) : null;
    // A bad policy or an impossible mode is refused before anything is started.
    const netSpec = this.networking?.specFor(opts.network, backend);
    this.pool?.userCreateStarted();
    try {
      const template = snapshot ?? (await this.resolveTemplate(ctx, opts));
      const made = { ...opts, template: snapshot?.template ?? opts.template, envs: { ...template.config.env, ...(opts.envs ?? {}) } };
      const defaults = {
        ...(template.config.workdir ? { cwd: template.config.workdir } : {}),
        ...(template.config.user ? { user: template.config.user } : {}),
        ...(template.config.sudo ? { setuid: true as const } : {}),
      };
      // Refused before a pooled sandbox is spent on it; checked again below, next to the insert.
      this.checkQuota(ctx, resources.memoryMb);
      // Pools are per template and isolation (README, warm pools), started on the template alone, without
      // volumes: a create claims from the pool of its own template and isolation, and one that attaches
      // volumes or starts from a snapshot is started cold.
      // A pooled sandbox was started without a network: one whose backend cannot add it later is started cold.
      const lateNetwork = netSpec?.mode === 'gateway' && backend.capabilities.networkAfterCreate === false;
      const pooled = this.pool !== null && volumes.length === 0 && !snapshot && !lateNetwork;
      const claimed = pooled ? await this.pool!.claim(opts.template, resources, backend.capabilities.isolation) : null;
      how.pooled = claimed !== null;
      if (claimed) {
        const rec = this.recordClaimed(ctx, claimed, made, resources, timeoutMs, defaults, backend);
        if (!this.networking) return rec;
        try {
          this.networking.register(rec.id, opts.network);
          await this.networking.ready(rec.id, claimed.conn, opts.signal);
        } catch (err) {
          await this.end(rec.id, 'failed', `network setup failed: ${err instanceof Error ? err.message : String(err)}`.slice(0, 2000));
          throw err;
        }
        return rec;
      }
      return await this.createCold(ctx, { ...made, snapshot: snapshot?.id }, template.layers, resources, timeoutMs, defaults, backend, volumes);
    } finally {
      this.pool?.userCreateEnded();
    }
  }

  private async resolveTemplate(ctx: RequestContext, opts: CreateOptions & { template: string }): ReturnType<TemplateProvider['resolve']> {
    if (opts.templateWaitMs === undefined) return this.templates.resolve(ctx, opts.template, opts.signal);
    const waited = AbortSignal.timeout(opts.templateWaitMs);
    const signal = opts.signal ? AbortSignal.any([opts.signal, waited]) : waited;
    try {
      return await this.templates.resolve(ctx, opts.template, signal);
    } catch (err) {
      if (!waited.aborted || opts.signal?.aborted) throw err;
      throw new UnavailableError(
        `template ${opts.template} is still being built (it takes a minute or two the first time on a machine); the build goes on: try again shortly`,
        { template: opts.template, retryable: true },
      );
    }
  }

  /** Any sandbox this caller may see, live or ended. Others' sandboxes are "not found", never "forbidden". */
  get(ctx: RequestContext, id: string): SandboxRecord {
    const rec = this.store.get(id);
    if (!rec || !canSee(ctx, rec.owner)) throw new NotFoundError(`sandbox ${id} not found`, { id });
    return rec;
  }

  /**
   * A running sandbox of this caller and its agent connection, for anything
   * that acts inside it (commands, files). `what` names the operation in the
   * conflict error a sandbox in another state gets. A paused or stopped
   * sandbox whose policy says autoResume is resumed or started first; this is
   * the one place every command and file call passes through.
   */
  async use(ctx: RequestContext, id: string, what: string): Promise<{ rec: SandboxRecord; conn: AgentConnection }> {
    let rec = this.get(ctx, id);
    // A snapshot holds the sandbox frozen for as long as its copy takes: wait for it rather than refuse.
    if (rec.state === 'snapshotting') {
      await this.lifecycle.settled(id);
      rec = this.get(ctx, id);
    }
    if (rec.state !== 'running' && rec.lifecycle.autoResume) {
      await this.lifecycle.wake(id, { beforeStart: (r) => this.checkMemoryQuota(ctx, r.resources.memoryMb) });
      rec = this.get(ctx, id);
    }
    requireState(id, rec.state, 'use', what, rec.endReason);
    if (rec.lifecycle.idleMs !== null) this.lifecycle.activity.touch(id);
    return { rec, conn: await this.connection(id) };
  }

  /**
   * use() when there is nothing to wait for, as for nearly every command: the sandbox is running and its
   * agent connected. Undefined otherwise, and then use() waits, wakes or refuses. It spares a command's
   * hot path the turns of the microtask queue that use()'s awaits cost (ADR 0016).
   */
  useNow(ctx: RequestContext, id: string): { rec: SandboxRecord; conn: AgentConnection } | undefined {
    const rec = this.get(ctx, id);
    if (rec.state !== 'running') return undefined;
    const made = this.connected.get(id);
    if (!made || this.connections.get(id) !== made.p) return undefined;
    if (rec.lifecycle.idleMs !== null) this.lifecycle.activity.touch(id);
    return { rec, conn: made.conn };
  }

  /**
   * Marks the sandbox busy for its idle policy until the returned function is
   * called (a foreground command or an output stream: the caller is waiting on
   * it, so it is not idle). Does nothing for sandboxes without idleMs.
   */
  hold(id: string): () => void {
    const rec = this.store.get(id);
    if (!rec || rec.lifecycle.idleMs === null) return () => undefined;
    return this.lifecycle.activity.hold(id);
  }

  /** Freeze every process (memory stays, CPU stops); its timeout clock stops too. Pausing a paused sandbox does nothing. */
  async pause(ctx: RequestContext, id: string): Promise<SandboxRecord> {
    this.get(ctx, id);
    await this.lifecycle.pause(id);
    return this.get(ctx, id);
  }

  /**
   * Hibernate (pause with memory: 'disk'): every process and its memory go to disk and the sandbox's
   * memory is freed; resume restores them. Needs the memorySnapshot capability (runc with CRIU 4).
   * Hibernating a hibernated sandbox does nothing.
   */
  async hibernate(ctx: RequestContext, id: string): Promise<SandboxRecord> {
    this.get(ctx, id);
    await this.lifecycle.hibernate(id);
    return this.get(ctx, id);
  }

  /**
   * Run `fn` (a checkpoint that leaves the processes running: a fork with memory) with the daemon's agent
   * connection closed, since a connection to the host cannot be dumped; its processes stay followed, and are
   * re-attached on a new connection afterwards. Call it inside a lifecycle operation (snapshotFiles).
   */
  async withAgentDetached<T>(id: string, fn: () => Promise<T>): Promise<T> {
    this.events?.onDetached?.(id);
    this.dropConnection(id);
    try {
      return await fn();
    } finally {
      try {
        await this.events?.onAdopted(id, await this.connection(id));
      } catch (err) {
        this.log.warn({ id, err: String(err) }, 're-attaching the processes of a sandbox after its fork checkpoint failed');
      }
    }
  }

  /** A fork with memory, second half: the new sandbox's own processes give way to the checkpoint's, which it then follows. */
  async restoreForkInto(id: string, images: string): Promise<void> {
    if (!this.runtime.restoreFork) throw new UnsupportedError(`the ${this.runtime.kind} backend cannot restore forks`, { id });
    this.dropConnection(id);
    await this.runtime.restoreFork(id, images);
    const conn = await this.connection(id);
    await this.events?.onAdopted(id, conn);
    await this.networking?.adopt(id, conn);
  }

  /** Thaw a paused sandbox: it continues where it was, with the lifetime it had left (or `timeoutMs`). */
  async resume(ctx: RequestContext, id: string, opts: Pick<WakeOptions, 'timeoutMs'> = {}): Promise<SandboxRecord> {
    this.get(ctx, id);
    if (opts.timeoutMs !== undefined) this.checkTimeout(opts.timeoutMs);
    await this.lifecycle.resume(id, opts);
    return this.get(ctx, id);
  }

  /** End every process and free its memory, keeping its files (and envs, metadata, limits) for start. */
  async stop(ctx: RequestContext, id: string): Promise<SandboxRecord> {
    this.get(ctx, id);
    await this.lifecycle.stop(id);
    return this.get(ctx, id);
  }

  /** Boot a stopped sandbox again, same id and files; its memory counts against the caller's quota again. */
  async start(ctx: RequestContext, id: string, opts: Pick<WakeOptions, 'timeoutMs'> = {}): Promise<SandboxRecord> {
    this.get(ctx, id);
    if (opts.timeoutMs !== undefined) this.checkTimeout(opts.timeoutMs);
    await this.lifecycle.start(id, { ...opts, beforeStart: (r) => this.checkMemoryQuota(ctx, r.resources.memoryMb) });
    return this.get(ctx, id);
  }

  /**
   * Run `capture` while the sandbox's files hold still, as one lifecycle operation (filesystem
   * snapshots, src/snapshots): a running sandbox is `snapshotting` meanwhile and running after, a
   * paused one stays paused; other states answer 409. `capture` gets the sandbox's record.
   */
  async snapshotFiles<T>(ctx: RequestContext, id: string, capture: (rec: SandboxRecord) => Promise<T>): Promise<T> {
    this.get(ctx, id);
    requireCapability(this.runtime, 'snapshot', 'snapshot the sandbox');
    return this.lifecycle.snapshot(id, () => capture(this.store.get(id)!));
  }

  list(ctx: RequestContext, filter: ListFilter = {}): SandboxRecord[] {
    const recs =
      filter.state === 'all' ? this.store.listAll() : this.store.listByStates(filter.state ? [filter.state] : LIVE_STATES);
    return recs.filter((r) => {
      if (!canSee(ctx, r.owner)) return false;
      for (const [k, v] of Object.entries(filter.metadata ?? {})) if (r.metadata[k] !== v) return false;
      return true;
    });
  }

  setTimeout(ctx: RequestContext, id: string, timeoutMs: number): SandboxRecord {
    const rec = this.get(ctx, id);
    requireState(id, rec.state, 'setTimeout', 'set the timeout', rec.endReason);
    const expiresAt = Date.now() + this.checkTimeout(timeoutMs);
    if (!this.store.setExpiry(id, rec.state, expiresAt, timeoutMs)) {
      const now = this.store.get(id);
      throw wrongState(id, now?.state ?? 'killed', 'set the timeout', now?.endReason);
    }
    return { ...rec, expiresAt, timeoutMs };
  }

  /** Kill a sandbox in any live state; killing an ended one answers its record (idempotent). */
  async kill(ctx: RequestContext, id: string): Promise<SandboxRecord> {
    this.get(ctx, id);
    await this.end(id, 'killed', 'killed by request');
    return this.get(ctx, id);
  }

  /** Which backend runs sandboxes and what it can do (GET /v1/info). */
  runtimeInfo(): { kind: string; name: string; capabilities: Omit<RuntimeCapabilities, 'network'> & { network: string[] } } {
    return { kind: this.runtime.kind, name: this.runtime.name, capabilities: { ...this.runtime.capabilities, network: [...this.runtime.capabilities.network] } };
  }

  /** Every isolation kind, with its backend or why this host has none (GET /v1/info). */
  backends(): BackendInfo[] {
    return backendsInfo(this.runtime);
  }

  /** Warm pool state, per template (empty when no pool is configured). */
  poolStats(): PoolStats[] {
    return this.pool?.stats() ?? [];
  }

  /**
   * How the sandbox's runtime opens an upload's temp file for the daemon to fill (file handoff, ADR 0016);
   * undefined where its backend cannot (gVisor, a microVM), and uploads are relayed through the agent.
   */
  fileHandoff(id: string): FileHandoff | undefined {
    const runtime = this.runtime;
    if (!runtime.openAgentFile || !backendOf(runtime, id).capabilities.fileHandoff) return undefined;
    return (fd, ino) => runtime.openAgentFile!(id, fd, ino);
  }

  /** OOM kills so far in the sandbox's memory cgroup, to tell an OOM death from other SIGKILLs. */
  oomKills(id: string): Promise<number> {
    return this.runtime.oomKills(id).catch(() => 0);
  }

  // --- creating -------------------------------------------------------------------

  /** A pooled sandbox becomes the caller's: its row is written now, already running, with the caller's owner, envs, metadata and clock. */
  private recordClaimed(
    ctx: RequestContext,
    claimed: Claimed,
    opts: NamedCreate,
    resources: ResourceLimits,
    timeoutMs: number,
    defaults: SandboxRecord['defaults'],
    backend: RuntimeDriver,
  ): SandboxRecord {
    try {
      // Checked and recorded without an await in between, so concurrent creates cannot both slip under a quota.
      this.checkQuota(ctx, resources.memoryMb);
    } catch (err) {
      claimed.conn.close();
      void this.runtime.destroy(claimed.id).catch((e: unknown) => this.log.error({ err: e, id: claimed.id }, 'cleanup of a claimed sandbox failed'));
      throw err;
    }
    // The clock starts at the claim, not when the pool started the container.
    const rec = this.newRecord(ctx, claimed.id, 'running', opts, resources, timeoutMs, defaults, backend.kind, [], claimed.layers);
    this.store.insert(rec);
    this.adoptConnection(claimed.id, claimed.conn);
    if (rec.lifecycle.idleMs !== null) this.lifecycle.activity.touch(rec.id);
    return rec;
  }

  private async createCold(
    ctx: RequestContext,
    opts: NamedCreate,
    layers: readonly LayerRef[],
    resources: ResourceLimits,
    timeoutMs: number,
    defaults: SandboxRecord['defaults'],
    backend: RuntimeDriver,
    volumes: SandboxVolume[] = [],
  ): Promise<SandboxRecord> {
    const id = newSandboxId();
    const spec = {
      ...containerSpec(backend, id, layers, resources, this.networking?.specFor(opts.network, backend), { allowSetuid: defaults.setuid }),
      volumes: volumes.map((v) => ({ volumeId: v.volumeId, sizeMb: v.sizeMb, target: v.path, readOnly: v.readOnly })),
      isolation: backend.capabilities.isolation,
    };
    // Checked and recorded without an await in between, so concurrent creates cannot both slip under a quota,
    // and a volume deleted meanwhile is not attached.
    this.checkQuota(ctx, resources.memoryMb);
    this.volumes?.stillThere(volumes);
    if (opts.snapshot !== undefined) this.snapshots?.stillThere(opts.snapshot);
    const rec = this.newRecord(ctx, id, 'creating', opts, resources, timeoutMs, defaults, backend.kind, volumes, layers);
    this.store.insert(rec);
    const abort = new AbortController();
    let settle!: () => void;
    this.creating.set(id, { abort, settled: new Promise<void>((r) => (settle = r)) });
    const signal = opts.signal ? AbortSignal.any([opts.signal, abort.signal]) : abort.signal;
    try {
      this.networking?.register(id, opts.network);
      await this.runtime.create(spec, signal);
      const conn = await this.connection(id, signal);
      await this.networking?.ready(id, conn, signal);
      // The clock starts when the sandbox is usable, not when the request came in.
      const expiresAt = Date.now() + timeoutMs;
      // The one step that makes it running: it fails when a kill (or anything else) ended it meanwhile.
      const t = this.store.transition(id, ['creating'], 'running', { expiresAt });
      if (!t.ok) throw this.lostCreate(id);
      if (rec.lifecycle.idleMs !== null) this.lifecycle.activity.touch(id);
      return { ...rec, state: 'running', expiresAt, stateChangedAt: Date.now() };
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      // Nothing happens when someone else already ended it (then their reason stands).
      this.store.transition(id, ['creating'], 'failed', { reason: `create failed: ${reason}`.slice(0, 2000) });
      this.networking?.ended(id);
      this.dropConnection(id);
      await this.destroyQuietly(id, 'cleanup after failed create');
      // Someone else ended it first (a kill): say so, rather than how the aborted create broke off.
      const now = this.store.get(id);
      if (now && now.state !== 'failed') throw this.lostCreate(id);
      throw err;
    } finally {
      this.creating.delete(id);
      settle();
    }
  }

  /** The error a create gets when its sandbox was ended while it was being made. */
  private lostCreate(id: string): ConflictError {
    const rec = this.store.get(id);
    return new ConflictError(
      `sandbox ${id} was ${rec?.state ?? 'removed'} while it was being created${rec?.endReason ? ` (${rec.endReason})` : ''}`,
      { id, state: rec?.state },
    );
  }

  private newRecord(
    ctx: RequestContext,
    id: string,
    state: 'creating' | 'running',
    opts: NamedCreate,
    resources: ResourceLimits,
    timeoutMs: number,
    defaults: SandboxRecord['defaults'],
    runtime: string,
    volumes: SandboxVolume[],
    layers: readonly LayerRef[],
  ): SandboxRecord {
    const now = Date.now();
    return {
      id,
      template: opts.template,
      state,
      owner: ownerFor(ctx),
      createdAt: now,
      expiresAt: now + timeoutMs,
      envs: opts.envs ?? {},
      metadata: opts.metadata ?? {},
      resources,
      endedAt: null,
      endReason: null,
      stateChangedAt: now,
      runtime,
      defaults,
      lifecycle: resolvePolicy(opts.lifecycle, this.config.defaultDeleteAfterMs),
      timeoutMs,
      remainingMs: null,
      volumes,
      // By id (a layer's digest, or builtin:<name>@<builtAt>): paths move when a built-in template is rebuilt.
      layers: layers.map((l) => l.digest ?? l.path),
      snapshot: opts.snapshot ?? null,
    };
  }

  // --- agent connections ----------------------------------------------------------

  /** The live agent connection of a running sandbox, reconnecting when it was lost. */
  private connection(id: string, signal?: AbortSignal): Promise<AgentConnection> {
    let p = this.connections.get(id);
    if (!p) {
      p = this.connectAgent(this.runtime.agentEndpoint(id), { timeoutMs: 5000, sandboxId: id, ...(signal ? { signal } : {}) }).then(
        (conn) => this.watch(id, conn, p!),
        (err: unknown) => {
          if (this.connections.get(id) === p) this.connections.delete(id);
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

  private dropConnection(id: string): void {
    const conn = this.connections.get(id);
    this.connections.delete(id);
    this.connected.delete(id);
    conn?.then((c) => c.close(), () => undefined);
  }

  private watch(id: string, conn: AgentConnection, p: Promise<AgentConnection>): AgentConnection {
    this.connected.set(id, { p, conn });
    conn.onClose((err) => {
      if (this.connections.get(id) === p) this.connections.delete(id);
      if (this.connected.get(id)?.conn === conn) this.connected.delete(id);
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
        await this.end(id, 'failed', `the sandbox's init process died (the runtime reports it ${info.status})`);
        return;
      }
      // 25 ms doubling: about 1.6 s in all. Unref'd: a pending check never holds a stopping daemon.
      if (attempt < attempts - 1) await new Promise((r) => setTimeout(r, 25 * 2 ** attempt).unref());
    }
  }

  // --- ending ---------------------------------------------------------------------

  /**
   * Moves a live sandbox to a terminal state once, whatever the reason, and
   * removes what it holds. The first caller wins the compare-and-set; later
   * callers wait for its cleanup. A sandbox still being created is cleaned up
   * by its own create (which is aborted here), never by two actors at once.
   */
  end(id: string, state: TerminalState, reason: string): Promise<void> {
    const running = this.ending.get(id);
    if (running) return running;
    const t = this.store.transition(id, LIVE_STATES, state, { reason });
    if (!t.ok) return Promise.resolve();
    this.events?.onEnded(id);
    this.lifecycle.forget(id);
    this.networking?.ended(id);
    const inFlight = this.creating.get(id);
    let work: Promise<void>;
    if (t.from === 'creating' && inFlight) {
      inFlight.abort.abort(new ConflictError(`sandbox ${id} was ${state} while it was being created (${reason})`, { id, state }));
      work = inFlight.settled;
    } else {
      work = (async () => {
        // A pause, resume, stop or start in flight finishes first (its own next step then fails): one actor cleans up.
        await this.lifecycle.settled(id);
        this.dropConnection(id);
        await this.destroyQuietly(id, 'destroying sandbox failed');
        this.log.info({ id, state, reason }, 'sandbox ended');
      })();
    }
    const tracked = work.finally(() => this.ending.delete(id));
    this.ending.set(id, tracked);
    return tracked;
  }

  /** Leftovers are retried at the next start (recover); the sandbox has ended either way. */
  private async destroyQuietly(id: string, what: string): Promise<void> {
    try {
      await this.runtime.destroy(id);
      this.afterDestroy?.();
    } catch (err) {
      this.log.error({ err, id }, what);
    }
  }

  startReaper(): void {
    if (this.reaper) return;
    this.reaper = setInterval(() => void this.reapExpired(), this.config.reapIntervalMs);
    this.reaper.unref();
  }

  /** Timeouts and idleness (lifecycle.onTimeout: kill, pause or stop), and retention of paused and stopped sandboxes. */
  async reapExpired(now = Date.now()): Promise<void> {
    await this.lifecycle.tick(now);
    try {
      this.history?.maybePurge(now);
    } catch (err) {
      this.log.error({ err }, 'deleting the history of ended sandboxes failed');
    }
  }

  /**
   * After a (re)start: adopt sandboxes whose containers still run, end the ones
   * that died or were half-made, and remove runtime leftovers nobody owns.
   */
  async recover(): Promise<{ adopted: string[]; kept: string[]; ended: string[]; cleaned: string[] }> {
    const adopted: string[] = [];
    const kept: string[] = [];
    const ended: string[] = [];
    for (const rec of this.store.listByStates(LIVE_STATES)) {
      if (rec.state !== 'running') {
        // Paused and stopped ones are kept without a word to their agent; cut-short operations are settled.
        const r = await this.lifecycle.recover(rec);
        if (r === 'kept') kept.push(rec.id);
        if (r === 'ended') ended.push(rec.id);
        if (r !== 'running') continue;
      }
      const info = await this.runtime.inspect(rec.id).catch(() => ({ status: 'missing' as const }));
      if (info.status !== 'running') {
        await this.end(rec.id, 'failed', `the sandbox was ${info.status} when the daemon started`);
        ended.push(rec.id);
        continue;
      }
      try {
        const conn = await this.connection(rec.id);
        await this.events?.onAdopted(rec.id, conn);
        await this.networking?.adopt(rec.id, conn);
        adopted.push(rec.id);
        if (rec.lifecycle.idleMs !== null) this.lifecycle.activity.touch(rec.id);
      } catch (err) {
        const why = err instanceof Error ? err.message : String(err);
        this.log.warn({ err, id: rec.id }, 'could not reach the agent of a running sandbox');
        await this.end(rec.id, 'failed', `agent unusable after daemon restart: ${why}`.slice(0, 2000));
        ended.push(rec.id);
      }
    }
    const live = new Set([...adopted, ...kept]);
    const cleaned: string[] = [];
    const known = new Set([...(await this.runtime.list()), ...(await this.runtime.listLeftovers())]);
    for (const id of known) {
      if (live.has(id)) continue;
      await this.runtime.destroy(id).catch((err: unknown) => this.log.error({ err, id }, 'cleanup of leftover failed'));
      cleaned.push(id);
    }
    return { adopted, kept, ended, cleaned };
  }

  /** Stop timers and connections; sandboxes keep running (they are re-adopted at next start). */
  async close(): Promise<void> {
    if (this.reaper) clearInterval(this.reaper);
    this.reaper = undefined;
    await Promise.allSettled([...this.ending.values(), ...[...this.creating.values()].map((c) => c.settled), this.lifecycle.allSettled()]);
    for (const p of this.connections.values()) p.then((c) => c.close(), () => undefined);
    this.connections.clear();
  }

  // --- rules ----------------------------------------------------------------------

  /** The caller's key quotas, counted over its owner's live sandboxes. Admins have none. */
  private checkQuota(ctx: RequestContext, memoryMb: number): void {
    const { admin, limits } = ctx.principal;
    if (admin) return;
    const owner = ownerFor(ctx);
    const live = this.store.listByStates(LIVE_STATES).filter((r) => r.owner === owner);
    if (limits.maxSandboxes !== null && live.length >= limits.maxSandboxes) {
      throw new RateLimitedError(`quota reached: ${live.length} of ${limits.maxSandboxes} live sandboxes; kill one first`, {
        maxSandboxes: limits.maxSandboxes,
      });
    }
    this.checkMemoryQuota(ctx, memoryMb, live);
  }

  /** The memory quota alone (a start brings a stopped sandbox's memory back). Stopped sandboxes hold none. */
  private checkMemoryQuota(ctx: RequestContext, memoryMb: number, owned?: SandboxRecord[]): void {
    const { admin, limits } = ctx.principal;
    if (admin || limits.maxMemoryMb === null) return;
    const owner = ownerFor(ctx);
    const live = owned ?? this.store.listByStates(LIVE_STATES).filter((r) => r.owner === owner);
    const used = live.filter((r) => r.state !== 'stopped' && r.state !== 'hibernated').reduce((sum, r) => sum + r.resources.memoryMb, 0);
    if (used + memoryMb > limits.maxMemoryMb) {
      throw new RateLimitedError(`quota reached: ${used} MiB of ${limits.maxMemoryMb} MiB in use, ${memoryMb} MiB more asked`, {
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

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
