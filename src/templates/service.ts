/**
 * TemplateService: knows the template definitions, builds them on first use,
 * and keeps their state in the `templates` table.
 *
 * On disk, per template:
 *   templates/<name>/rootfs            the ready tree (uid/gid shifted), read-only lower layer
 *   templates/<name>/rootfs.tmp-XXXX   a build in progress (removed on failure and by recover())
 *   templates/<name>/old-<builtAt>     a replaced tree that sandboxes may still use (see pruneOld)
 *
 * A build writes into a temp dir next to the final one, shifts its owners and
 * then renames it into place, so `rootfs` is always either absent or complete.
 * Only one build per name runs at a time in this process: concurrent ensure()
 * calls share it. (There is no lock across processes: only the daemon builds.)
 */
import type { LayerRef } from '../runtime/types.js';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { DataPaths } from '../config/index.js';
import { CapsuleError, NotFoundError, RuntimeError } from '../errors/index.js';
import type { Db } from '../store/db.js';
import { busyboxTemplate } from './busybox.js';
import { baseTemplate, debianTemplate, debianTrixieTemplate } from './debian.js';
import { pythonTemplate } from './python.js';
import { exists, removeTree } from './fsutil.js';
import { shiftOwnership } from './idshift.js';
import type { BuildProgress, BuiltinConfig, TemplateDefinition, TemplateInfo, TemplateStatus } from './types.js';

type LogFn = (obj: Record<string, unknown>, msg?: string) => void;
/** The subset of a pino logger this service uses. */
export interface TemplateLogger {
  info: LogFn;
  warn: LogFn;
  error: LogFn;
}

/** Tells whether a replaced rootfs is still the lower layer of a running sandbox. */
export type InUsePredicate = (oldRootfs: string, info: { name: string; builtAt: number | undefined }) => boolean;

export interface TemplateServiceOptions {
  db: Db;
  paths: DataPaths;
  idMapBase: number;
  logger?: TemplateLogger;
  /** Replaces the built-in registry (busybox, debian, base, python). */
  definitions?: TemplateDefinition[];
  /**
   * When given, a forced rebuild prunes replaced trees right away with it.
   * Without it, replaced trees stay until pruneOld() is called: deleting a
   * lower layer under a mounted overlay breaks the sandboxes using it.
   */
  inUse?: InUsePredicate;
  /** Told when a build finishes (the daemon's Prometheus counters). */
  onBuilt?: (name: string, outcome: 'ok' | 'error') => void;
}

export interface BuildOptions {
  /** Rebuild even if the template is ready. */
  force?: boolean;
  onProgress?: (p: BuildProgress) => void;
  signal?: AbortSignal;
}

export const BUILTIN_TEMPLATES: readonly TemplateDefinition[] = [busyboxTemplate, debianTemplate, debianTrixieTemplate, baseTemplate, pythonTemplate];

interface Row {
  name: string;
  status: TemplateStatus;
  rootfs: string;
  size_bytes: number | null;
  built_at: number | null;
  error: string | null;
}

interface InFlight {
  promise: Promise<string>;
  listeners: Set<(p: BuildProgress) => void>;
  waiters: number;
  controller: AbortController;
  force: boolean;
  last?: BuildProgress;
}

function prepareStatements(db: Db) {
  return {
    get: db.prepare<[string], Row>('SELECT * FROM templates WHERE name = ?'),
    all: db.prepare<[], Row>('SELECT * FROM templates'),
    building: db.prepare(
      `INSERT INTO templates (name, status, rootfs, error) VALUES (@name, 'building', @rootfs, NULL)
       ON CONFLICT(name) DO UPDATE SET status = 'building', rootfs = @rootfs, error = NULL`,
    ),
    ready: db.prepare(
      `UPDATE templates SET status = 'ready', size_bytes = @size, built_at = @builtAt, error = NULL WHERE name = @name`,
    ),
    setStatus: db.prepare(`UPDATE templates SET status = @status, error = @error WHERE name = @name`),
  };
}
type Statements = ReturnType<typeof prepareStatements>;

const noopLog: TemplateLogger = { info() {}, warn() {}, error() {} };

function isAbort(e: unknown): boolean {
  return e instanceof Error && (e.name === 'AbortError' || e.name === 'TimeoutError') && !(e instanceof CapsuleError);
}

function abortError(signal: AbortSignal): unknown {
  return signal.reason ?? Object.assign(new Error('the operation was aborted'), { name: 'AbortError' });
}

export class TemplateService {
  private readonly db: Db;
  private readonly paths: DataPaths;
  private readonly idMapBase: number;
  private readonly log: TemplateLogger;
  private readonly defs = new Map<string, TemplateDefinition>();
  private readonly inUse: InUsePredicate | undefined;
  private readonly inflight = new Map<string, InFlight>();
  private readonly stmts: Statements;
  private readonly onBuilt: ((name: string, outcome: 'ok' | 'error') => void) | undefined;

  constructor(opts: TemplateServiceOptions) {
    this.onBuilt = opts.onBuilt;
    this.db = opts.db;
    this.paths = opts.paths;
    this.idMapBase = opts.idMapBase;
    this.log = opts.logger ?? noopLog;
    this.inUse = opts.inUse;
    for (const d of opts.definitions ?? BUILTIN_TEMPLATES) this.defs.set(d.name, d);
    this.stmts = prepareStatements(this.db);
  }

  /** Names of the known definitions, in registry order. */
  names(): string[] {
    return [...this.defs.keys()];
  }

  private definition(name: string): TemplateDefinition {
    const d = this.defs.get(name);
    if (!d) {
      throw new NotFoundError(`unknown template "${name}": use one of ${this.names().join(', ')}`, {
        template: name,
        known: this.names(),
      });
    }
    return d;
  }

  private info(def: TemplateDefinition, row: Row | undefined): TemplateInfo {
    let status: TemplateStatus = row?.status ?? 'missing';
    if (this.inflight.has(def.name)) status = 'building';
    else if (status === 'ready' && !fs.existsSync(this.paths.templateRootfs(def.name))) status = 'missing';
    const info: TemplateInfo = { name: def.name, description: def.description, status };
    if (row?.size_bytes != null) info.sizeBytes = row.size_bytes;
    if (row?.built_at != null) info.builtAt = row.built_at;
    if (row?.error) info.error = row.error;
    return info;
  }

  /** Every known template with its state. */
  list(): TemplateInfo[] {
    const rows = new Map(this.stmts.all.all().map((r) => [r.name, r]));
    return [...this.defs.values()].map((d) => this.info(d, rows.get(d.name)));
  }

  /** What sandboxes of built-in `name` get besides its files. */
  config(name: string): BuiltinConfig {
    return this.definition(name).config ?? {};
  }

  get(name: string): TemplateInfo {
    return this.info(this.definition(name), this.stmts.get.get(name));
  }

  /**
   * The ready rootfs path of `name`, building it first if needed. Concurrent
   * calls share one build; aborting `signal` stops waiting, never the build
   * (see close()).
   */
  async ensure(name: string, onProgress?: (p: BuildProgress) => void, signal?: AbortSignal): Promise<string> {
    this.definition(name);
    signal?.throwIfAborted();
    const final = this.paths.templateRootfs(name);
    const flight = this.inflight.get(name);
    if (!flight) {
      const row = this.stmts.get.get(name);
      if (row?.status === 'ready' && (await exists(final))) return final;
    }
    return this.join(name, false, onProgress, signal);
  }

  /** The read-only layers a sandbox of `name` stacks, lowest first (built-in templates are one layer), building it when needed. */
  async layers(name: string, onProgress?: (p: BuildProgress) => void, signal?: AbortSignal): Promise<LayerRef[]> {
    const rootfs = await this.ensure(name, onProgress, signal);
    const builtAt = this.get(name).builtAt;
    return [{ path: rootfs, digest: `builtin:${name}@${builtAt ?? 0}` }];
  }

  /** Build `name` (only if not ready, unless `force`). Returns the rootfs path. */
  async build(name: string, opts: BuildOptions = {}): Promise<string> {
    if (!opts.force) return this.ensure(name, opts.onProgress, opts.signal);
    this.definition(name);
    // A forced build waits for a build already running (unless that one is forced too: then it is shared).
    for (;;) {
      const current = this.inflight.get(name);
      if (!current || current.force) break;
      await current.promise.catch(() => undefined);
    }
    return this.join(name, true, opts.onProgress, opts.signal);
  }

  /** Stop every running build (daemon shutdown) and wait until each has cleaned up. */
  async close(): Promise<void> {
    const flights = [...this.inflight.values()];
    for (const f of flights) f.controller.abort(Object.assign(new Error('the daemon is shutting down'), { name: 'AbortError' }));
    await Promise.all(flights.map((f) => f.promise.catch(() => undefined)));
  }

  private join(name: string, force: boolean, onProgress?: (p: BuildProgress) => void, signal?: AbortSignal): Promise<string> {
    let flight = this.inflight.get(name);
    if (!flight) {
      const controller = new AbortController();
      const f: InFlight = { listeners: new Set(), waiters: 0, controller, force, promise: Promise.resolve('') };
      const emit = (p: BuildProgress): void => {
        f.last = p;
        for (const l of f.listeners) {
          try {
            l(p);
          } catch {
            /* a listener's problem is not the build's */
          }
        }
      };
      f.promise = this.runBuild(this.definition(name), emit, controller.signal).finally(() => {
        if (this.inflight.get(name) === f) this.inflight.delete(name);
      });
      f.promise.catch(() => undefined); // callers handle it; avoid an unhandled rejection when all left
      this.inflight.set(name, f);
      flight = f;
    }
    const f = flight;
    f.waiters++;
    if (onProgress) {
      f.listeners.add(onProgress);
      if (f.last) onProgress(f.last); // a late joiner sees where the build is
    }
    return new Promise<string>((resolve, reject) => {
      let done = false;
      const leave = (): void => {
        if (done) return;
        done = true;
        f.waiters--;
        if (onProgress) f.listeners.delete(onProgress);
        signal?.removeEventListener('abort', onAbort);
      };
      // A caller that stops waiting leaves the build running: it is a job, and the next caller
      // (a retried MCP call, a sandbox create) joins it. close() is what stops builds.
      const onAbort = (): void => {
        if (done) return;
        leave();
        reject(abortError(signal!));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      f.promise.then(
        (v) => {
          if (done) return;
          leave();
          resolve(v);
        },
        (e: unknown) => {
          if (done) return;
          leave();
          reject(e);
        },
      );
    });
  }

  private async runBuild(def: TemplateDefinition, emit: (p: BuildProgress) => void, signal: AbortSignal): Promise<string> {
    const name = def.name;
    const dir = path.join(this.paths.templates, name);
    const final = this.paths.templateRootfs(name);
    // Sandboxes' mapped root must be able to reach the lower layer: keep the path traversable.
    await fsp.mkdir(dir, { recursive: true });
    await fsp.chmod(this.paths.templates, 0o755);
    await fsp.chmod(dir, 0o755);
    const tmp = await fsp.mkdtemp(path.join(dir, 'rootfs.tmp-'));
    await fsp.chmod(tmp, 0o755); // mkdtemp makes it 0700; it becomes the container's /
    const previous = this.stmts.get.get(name);
    this.stmts.building.run({ name, rootfs: final });
    const started = performance.now();
    this.log.info({ template: name, tmp }, 'template build started');
    try {
      // Cancelled while the directories were made (close(), the last waiter gone): do not start the build.
      signal.throwIfAborted();
      // The definition's own 0..1 maps to 0..0.97; shifting and installing take the rest.
      await def.build(
        tmp,
        (p) => emit({ ...p, ...(p.fraction !== undefined ? { fraction: Math.min(1, Math.max(0, p.fraction)) * 0.97 } : {}) }),
        signal,
      );
      signal.throwIfAborted();
      emit({ phase: 'shifting ownership', fraction: 0.97 });
      const shifted = await shiftOwnership(tmp, this.idMapBase, { signal });
      signal.throwIfAborted();

      emit({ phase: 'installing', fraction: 0.99 });
      let old: string | undefined;
      if (await exists(final)) {
        // Not deleted here: running sandboxes may have it mounted as their lower layer.
        old = await this.uniqueOldPath(dir, previous?.built_at ?? Date.now());
        await fsp.rename(final, old);
      }
      await fsp.rename(tmp, final);
      const builtAt = Date.now();
      this.stmts.ready.run({ name, size: shifted.bytes, builtAt });
      const ms = Math.round(performance.now() - started);
      this.log.info({ template: name, ms, sizeBytes: shifted.bytes, entries: shifted.entries }, 'template ready');
      emit({ phase: 'ready', fraction: 1, message: `${(shifted.bytes / 1e6).toFixed(1)} MB in ${(ms / 1000).toFixed(1)} s` });
      this.onBuilt?.(name, 'ok');
      if (old && this.inUse) await this.pruneOld(this.inUse).catch((e: unknown) => this.log.warn({ err: e }, 'pruning old templates failed'));
      return final;
    } catch (e) {
      await removeTree(tmp).catch((re: unknown) => this.log.error({ err: re, tmp }, 'could not remove failed build'));
      const stillUsable = previous?.built_at != null && (await exists(final));
      const aborted = signal.aborted || isAbort(e);
      const message = aborted
        ? 'build was cancelled; it starts again on next use'
        : e instanceof Error
          ? e.message
          : String(e);
      // A failed forced rebuild leaves the previous tree in service.
      this.stmts.setStatus.run({ name, status: stillUsable ? 'ready' : 'failed', error: stillUsable ? `last rebuild failed: ${message}` : message });
      this.log.warn({ template: name, err: message }, 'template build failed');
      this.onBuilt?.(name, 'error');
      if (aborted || e instanceof CapsuleError) throw e;
      throw new RuntimeError(`building template "${name}" failed: ${message}. Fix the cause and build it again (it is retried on next use).`, { template: name }, { cause: e });
    }
  }

  private async uniqueOldPath(dir: string, ts: number): Promise<string> {
    let p = path.join(dir, `old-${ts}`);
    for (let i = 1; await exists(p); i++) p = path.join(dir, `old-${ts}-${i}`);
    return p;
  }

  /**
   * Delete replaced rootfs trees (`templates/<name>/old-<builtAt>`) that no
   * sandbox uses any more. `builtAt` is the build time of that tree, as
   * get(name).builtAt reported while it was current: a sandbox that records
   * it at start can be matched to its lower layer. Returns the removed paths.
   */
  async pruneOld(inUse: InUsePredicate): Promise<string[]> {
    const removed: string[] = [];
    for (const name of await fsp.readdir(this.paths.templates).catch(() => [] as string[])) {
      const dir = path.join(this.paths.templates, name);
      for (const e of await fsp.readdir(dir).catch(() => [] as string[])) {
        const m = /^old-(\d+)(?:-\d+)?$/.exec(e);
        if (!m) continue;
        const p = path.join(dir, e);
        if (inUse(p, { name, builtAt: Number(m[1]) })) continue;
        await removeTree(p);
        removed.push(p);
        this.log.info({ template: name, path: p }, 'removed replaced template rootfs');
      }
    }
    return removed;
  }

  /** The rootfs tree of the build made at `builtAt`: the current one or a replaced one kept aside. */
  rootfsForBuild(name: string, builtAt: number): string {
    const row = this.stmts.get.get(name);
    if (row?.built_at === builtAt) return this.paths.templateRootfs(name);
    return path.join(this.paths.templates, name, `old-${builtAt}`);
  }

  /**
   * Call once at daemon start, before anything else uses the service: builds
   * recorded as 'building' were cut off by a restart; temp dirs they left are
   * deleted and rows whose tree vanished become 'missing'.
   */
  async recover(): Promise<{ removedTemp: string[]; reset: string[] }> {
    const removedTemp: string[] = [];
    const reset: string[] = [];
    for (const row of this.stmts.all.all()) {
      if (this.inflight.has(row.name)) continue;
      const present = await exists(this.paths.templateRootfs(row.name));
      if (row.status === 'building') {
        if (present && row.built_at != null) {
          this.stmts.setStatus.run({ name: row.name, status: 'ready', error: null });
        } else {
          this.stmts.setStatus.run({
            name: row.name,
            status: 'failed',
            error: 'build was interrupted by a daemon restart; it starts again on next use',
          });
        }
        reset.push(row.name);
      } else if (row.status === 'ready' && !present) {
        this.stmts.setStatus.run({ name: row.name, status: 'missing', error: null });
        reset.push(row.name);
      }
    }
    for (const name of await fsp.readdir(this.paths.templates).catch(() => [] as string[])) {
      if (this.inflight.has(name)) continue;
      const dir = path.join(this.paths.templates, name);
      for (const e of await fsp.readdir(dir).catch(() => [] as string[])) {
        if (!e.startsWith('rootfs.tmp-')) continue;
        const p = path.join(dir, e);
        await removeTree(p);
        removedTemp.push(p);
      }
    }
    if (reset.length || removedTemp.length) this.log.info({ reset, removedTemp }, 'template state recovered');
    return { removedTemp, reset };
  }
}
