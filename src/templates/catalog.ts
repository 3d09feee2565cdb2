/**
 * The template service as callers see it (REST, SDK, CLI, MCP, and the
 * sandbox service when it creates a sandbox): every method takes the caller's
 * RequestContext.
 *
 * Two kinds of templates share one namespace:
 *  - built-ins (busybox, debian, base): built on the host by TemplateService,
 *    shared by every owner, read-only; a forced rebuild needs an admin;
 *  - user templates: defined in code (or imported from an OCI image), built
 *    into layers by TemplateBuilder as jobs, owned by whoever built them: other
 *    owners neither see nor start them; an admin sees all and may name one as
 *    "<owner>/<name>". Their layers may be shared on disk between owners.
 *
 * A template resolves to a chain of layers (lowest first) and a config (env,
 * workdir, user) the sandbox's commands get.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { RequestContext } from '../auth/context.js';
import { ownerFor } from '../auth/context.js';
import { ConflictError, InvalidArgumentError, NotFoundError, PermissionDeniedError } from '../errors/index.js';
import type { LayerRef } from '../runtime/types.js';
import { canonicalJson, type LayerStore } from '../layers/store.js';
import type { BuildEvent, BuildInfo, TemplateConfig, TemplateDefinition } from '../schemas/templates.js';
import type { BlobStore } from './blobs.js';
import type { BuildStart, ChainLayer, TemplateBuilder } from './builder.js';
import type { BuildJob, BuildJobs } from './jobs.js';
import { importImage } from './oci-import.js';
import type { TemplateService } from './service.js';
import type { BuildProgress, TemplateInfo } from './types.js';
import { ownerKey, type UserTemplate, type UserTemplates } from './user-templates.js';

export interface BuildRequest {
  force?: boolean | undefined;
  onProgress?: ((p: BuildProgress) => void) | undefined;
  signal?: AbortSignal | undefined;
}

/** What a sandbox of a template stacks and gets. */
export interface ResolvedTemplate {
  layers: LayerRef[];
  config: TemplateConfig;
}

/** A template as the API lists it. */
export interface TemplateSummary extends TemplateInfo {
  builtIn: boolean;
  owner?: string;
  buildId?: string;
}

export interface TemplateDetails extends TemplateSummary {
  layers: Array<{ digest: string; kind: string; sizeBytes: number; entries: number; description: string }>;
  config?: TemplateConfig;
  definition?: TemplateDefinition;
}

export interface CatalogDeps {
  builtins: TemplateService;
  users: UserTemplates;
  layers: LayerStore;
  blobs: BlobStore;
  builder: TemplateBuilder;
  jobs: BuildJobs;
  /** Live sandboxes (any non-final state) started from the user template (owner, name). */
  sandboxesUsing: (owner: string, name: string) => number;
  /** The sandboxes' id range, for shifting the owners of imported files. */
  idMapBase: number;
  idMapSize: number;
  /** Whether a sandbox sits on a layer tree (the driver's record of each sandbox's lower layers). */
  treeInUse: (treePath: string) => boolean;
}

/** Debian's suites as tags of the built-ins that hold them; the built-ins have no other tags. */
const BUILTIN_ALIASES: Readonly<Record<string, string>> = { 'debian:bookworm': 'debian', 'debian:trixie': 'debian-trixie' };

/** Most bytes one image layer may unpack to. */
const IMPORT_MAX_BYTES = 16 * 1024 ** 3;
const EMPTY_CONFIG: TemplateConfig = { env: {} };

export class TemplateCatalog {
  /** Layer ids held by something other than templates (snapshots): pruning keeps them. */
  private readonly holders: Array<() => Iterable<string>> = [];

  constructor(private readonly d: CatalogDeps) {}

  /** Another holder of layer ids (the snapshot service): its layers are never pruned while it names them. */
  addLayerHolder(fn: () => Iterable<string>): void {
    this.holders.push(fn);
  }

  /**
   * Layer ids (a chain, lowest first: `builtin:<name>@<builtAt>` or layer digests) as the trees a
   * sandbox stacks. A built-in template's replaced tree is found where its rebuild moved it.
   */
  chainRefs(ids: readonly string[]): LayerRef[] {
    return this.chain([...ids]).map((l) => ({ path: l.path, digest: l.id }));
  }

  // --- reading --------------------------------------------------------------------

  list(ctx: RequestContext): TemplateSummary[] {
    const builtins = this.d.builtins.list().map((t) => ({ ...t, builtIn: true }));
    const mine = this.d.users.list(ctx.principal.admin ? null : ownerKey(ownerFor(ctx)));
    return [...builtins, ...mine.map((u) => this.summary(ctx, u))];
  }

  get(ctx: RequestContext, name: string): TemplateSummary {
    const builtin = this.builtinName(name);
    if (builtin) return { ...this.d.builtins.get(builtin), builtIn: true };
    return this.summary(ctx, this.user(ctx, name));
  }

  details(ctx: RequestContext, name: string): TemplateDetails {
    const builtin = this.builtinName(name);
    if (builtin) {
      const info = this.d.builtins.get(builtin);
      return {
        ...info,
        builtIn: true,
        config: this.builtinConfig(builtin),
        layers: info.status === 'ready' ? [{ digest: `builtin:${builtin}@${info.builtAt ?? 0}`, kind: 'base', sizeBytes: info.sizeBytes ?? 0, entries: 0, description: info.description }] : [],
      };
    }
    const u = this.user(ctx, name);
    const layers = (u.layers ?? []).map((id) => {
      if (id.startsWith('builtin:')) {
        const { name: b } = parseBuiltinId(id);
        const info = this.d.builtins.get(b);
        return { digest: id, kind: 'base', sizeBytes: info.sizeBytes ?? 0, entries: 0, description: `built-in template ${b}` };
      }
      const l = this.d.layers.get(id);
      return { digest: id, kind: l?.kind ?? 'step', sizeBytes: l?.sizeBytes ?? 0, entries: l?.entries ?? 0, description: l?.description ?? '' };
    });
    return {
      ...this.summary(ctx, u),
      layers,
      ...(u.config ? { config: u.config } : {}),
      ...('from' in u.definition ? { definition: u.definition } : {}),
    };
  }

  /**
   * The layers and config of a template the caller may use, building a built-in
   * one when needed (a user template must have been built).
   */
  async resolve(ctx: RequestContext, name: string, signal?: AbortSignal): Promise<ResolvedTemplate> {
    const builtin = this.builtinName(name);
    if (builtin) return { layers: await this.d.builtins.layers(builtin, undefined, signal), config: this.builtinConfig(builtin) };
    const u = this.user(ctx, name);
    if (!u.layers) {
      const why = u.status === 'building' ? `is still building (build ${u.buildId})` : `has no successful build${u.error ? `: ${u.error}` : ''}`;
      throw new ConflictError(`template ${name} ${why}`, { template: name, status: u.status });
    }
    return { layers: this.chain(u.layers).map((l) => ({ path: l.path, digest: l.id })), config: u.config ?? EMPTY_CONFIG };
  }

  // --- built-ins ------------------------------------------------------------------

  /** Throws what build() would refuse with before it starts: an unknown name, a forced rebuild by a non-admin. */
  checkBuild(ctx: RequestContext, name: string, req: Pick<BuildRequest, 'force'> = {}): void {
    const builtin = this.builtinName(name);
    if (!builtin) {
      this.user(ctx, name);
      throw new InvalidArgumentError(`template ${name} is built from its definition: POST /v1/templates with it`, { template: name });
    }
    if (req.force && !ctx.principal.admin) throw new PermissionDeniedError('a forced rebuild needs an admin key');
  }

  async build(ctx: RequestContext, name: string, req: BuildRequest = {}): Promise<TemplateInfo> {
    this.checkBuild(ctx, name, req);
    const builtin = this.builtinName(name)!;
    await this.d.builtins.build(builtin, {
      ...(req.force ? { force: true } : {}),
      ...(req.onProgress ? { onProgress: req.onProgress } : {}),
      ...(req.signal ? { signal: req.signal } : {}),
    });
    return this.d.builtins.get(builtin);
  }

  // --- user templates --------------------------------------------------------------

  /**
   * Build (or rebuild) the caller's template `name` from `definition`, as a job.
   * Returns at once; follow the job for progress. The same definition asked again
   * while it builds joins that build.
   */
  define(ctx: RequestContext, name: string, definition: TemplateDefinition): BuildJob {
    const owner = ownerKey(ownerFor(ctx));
    this.checkUserName(name);
    // Blobs are checked now, so a missing upload fails the request rather than step k of the build.
    for (const s of definition.steps) {
      if (s.type === 'copy' && !this.d.blobs.has(owner, s.source)) {
        throw new InvalidArgumentError(`copy step: archive ${s.source} was not uploaded (PUT /v1/blobs/${s.source})`, { digest: s.source });
      }
    }
    const base = this.baseName(ctx, definition.from);
    const key = sha256(canonicalJson({ owner, name, definition }));
    return this.d.jobs.start(owner, name, key, definition.steps.length, async (reporter, job) => {
      this.d.users.building(owner, name, definition, job.id);
      try {
        reporter.progress(0, definition.steps.length, `preparing ${definition.from}`);
        const start = await this.buildStart(base, job.signal);
        const result = await this.d.builder.build(owner, start, definition, reporter, job.signal);
        const size = result.chain.reduce((sum, l) => sum + (this.d.layers.get(l.id)?.sizeBytes ?? 0), 0);
        this.d.users.ready(owner, name, result.chain.map((l) => l.id), result.config, size);
        void this.prune();
      } catch (e) {
        this.d.users.failed(owner, name, e instanceof Error ? e.message : String(e));
        throw e;
      }
    });
  }

  /**
   * Make the caller's template `name` from an OCI image archive uploaded as a
   * blob (docker save, or a tar of an OCI image layout), as a job like define().
   */
  importImage(ctx: RequestContext, name: string, image: string): BuildJob {
    const owner = ownerKey(ownerFor(ctx));
    this.checkUserName(name);
    if (!this.d.blobs.has(owner, image)) {
      throw new InvalidArgumentError(`image archive ${image} was not uploaded (PUT /v1/blobs/${image})`, { digest: image });
    }
    const key = sha256(canonicalJson({ owner, name, import: image }));
    return this.d.jobs.start(owner, name, key, 1, async (reporter, job) => {
      this.d.users.building(owner, name, { import: image }, job.id);
      try {
        const ac = { signal: job.signal };
        const scratch = path.join(this.d.layers.root, `.tmp-import-${job.id}`);
        const r = await importImage(
          { layers: this.d.layers, idMapBase: this.d.idMapBase, idMapSize: this.d.idMapSize },
          this.d.blobs.open(owner, image),
          scratch,
          reporter,
          { maxBytes: IMPORT_MAX_BYTES, signal: ac.signal },
        );
        const n = r.layers.length;
        const chain = await this.d.builder.bound(
          r.layers.map((id) => ({ id, path: this.d.layers.path(id) })),
          (phase) => reporter.progress(n, n, phase),
          ac.signal,
        );
        const size = chain.reduce((sum, l) => sum + (this.d.layers.get(l.id)?.sizeBytes ?? 0), 0);
        this.d.users.ready(owner, name, chain.map((l) => l.id), r.config, size);
        reporter.progress(n, n, `imported ${n} layer${n === 1 ? '' : 's'}${r.reference ? ` of ${r.reference}` : ''}`);
        void this.prune();
      } catch (e) {
        this.d.users.failed(owner, name, e instanceof Error ? e.message : String(e));
        throw e;
      }
    });
  }

  /** Remove the caller's template; refused while sandboxes use it. Its layers go once nothing else holds them. */
  async remove(ctx: RequestContext, name: string): Promise<void> {
    if (this.builtinName(name)) throw new PermissionDeniedError(`${name} is a built-in template; it cannot be removed`);
    const u = this.user(ctx, name);
    const n = this.d.sandboxesUsing(u.owner, u.name);
    if (n > 0) throw new ConflictError(`template ${name} is used by ${n} sandbox${n === 1 ? '' : 'es'}; kill them first`, { template: name, sandboxes: n });
    if (u.status === 'building') throw new ConflictError(`template ${name} is being built (build ${u.buildId}); wait for it`, { template: name });
    this.d.users.remove(u.owner, u.name);
    await this.prune();
  }

  job(ctx: RequestContext, id: string): BuildJob {
    return this.d.jobs.get(ctx.principal.admin ? null : ownerKey(ownerFor(ctx)), id);
  }

  buildInfo(ctx: RequestContext, id: string): BuildInfo {
    return this.job(ctx, id).info();
  }

  followBuild(ctx: RequestContext, id: string, write: (ev: BuildEvent) => void): { done: Promise<void>; stop: () => void } {
    return this.d.jobs.follow(this.job(ctx, id), write);
  }

  // --- uploads ----------------------------------------------------------------------

  hasBlob(ctx: RequestContext, digest: string): boolean {
    return this.d.blobs.has(ownerKey(ownerFor(ctx)), digest);
  }

  putBlob(ctx: RequestContext, digest: string, data: Readable): Promise<number> {
    return this.d.blobs.put(ownerKey(ownerFor(ctx)), digest, data);
  }

  // --- upkeep -----------------------------------------------------------------------

  /** Daemon shutdown: running builds stop (and are marked failed). */
  async close(): Promise<void> {
    await this.d.jobs.close();
    await this.d.builtins.close();
  }

  /** Whether a user template's chain still names the built-in tree of `name` built at `builtAt` (keep it). */
  referencesBuiltin(name: string, builtAt: number | undefined): boolean {
    if (builtAt === undefined) return false;
    const id = `builtin:${name}@${builtAt}`;
    return this.d.users.list(null).some((u) => u.layers?.includes(id)) || this.held().has(id);
  }

  /** Remove layers no template or snapshot references and no sandbox sits on. */
  async prune(): Promise<string[]> {
    return this.d.layers.prune(new Set([...this.d.users.referencedLayers(), ...this.held()]), this.d.treeInUse);
  }

  private held(): Set<string> {
    return new Set(this.holders.flatMap((fn) => [...fn()]));
  }

  // --- internals --------------------------------------------------------------------

  private summary(ctx: RequestContext, u: UserTemplate): TemplateSummary {
    return {
      name: ctx.principal.admin && u.owner !== ownerKey(ownerFor(ctx)) ? `${u.owner}/${u.name}` : u.name,
      description: 'from' in u.definition ? `from ${u.definition.from}, ${u.definition.steps.length} steps` : `imported from ${u.definition.import}`,
      status: u.status === 'building' ? 'building' : u.layers ? 'ready' : 'failed',
      builtIn: false,
      ...(ctx.principal.admin ? { owner: u.owner } : {}),
      ...(u.sizeBytes !== null ? { sizeBytes: u.sizeBytes } : {}),
      ...(u.builtAt !== null ? { builtAt: u.builtAt } : {}),
      ...(u.error !== null ? { error: u.error } : {}),
      ...(u.buildId !== null ? { buildId: u.buildId } : {}),
    };
  }

  private builtinConfig(name: string): TemplateConfig {
    const c = this.d.builtins.config(name);
    return { env: { ...(c.env ?? {}) }, ...(c.workdir ? { workdir: c.workdir } : {}), ...(c.user ? { user: c.user } : {}), ...(c.sudo ? { sudo: true } : {}) };
  }

  private builtinName(name: string): string | undefined {
    const n = BUILTIN_ALIASES[name] ?? name;
    return this.d.builtins.names().includes(n) ? n : undefined;
  }

  private checkUserName(name: string): void {
    if (this.builtinName(name)) throw new ConflictError(`${name} is a built-in template's name; pick another`, { template: name });
  }

  /** A user template the caller may use: its own, or "<owner>/<name>" for an admin. */
  private user(ctx: RequestContext, name: string): UserTemplate {
    const slash = name.indexOf('/');
    let owner = ownerKey(ownerFor(ctx));
    let bare = name;
    if (slash >= 0) {
      if (!ctx.principal.admin) throw new NotFoundError(`template ${name} not found`, { template: name });
      owner = name.slice(0, slash);
      bare = name.slice(slash + 1);
    }
    const u = this.d.users.get(owner, bare);
    if (!u) {
      throw new NotFoundError(`template ${name} not found: use a built-in one (${this.d.builtins.names().join(', ')}) or one you built`, { template: name });
    }
    return u;
  }

  /** The base a definition starts from, checked at request time. */
  private baseName(ctx: RequestContext, from: string): { builtin: string } | { user: UserTemplate } {
    const builtin = this.builtinName(from);
    if (builtin) return { builtin };
    const u = this.user(ctx, from);
    if (!u.layers) throw new ConflictError(`base template ${from} has no successful build`, { template: from });
    return { user: u };
  }

  private async buildStart(base: { builtin: string } | { user: UserTemplate }, signal: AbortSignal): Promise<BuildStart> {
    if ('builtin' in base) {
      const rootfs = await this.d.builtins.ensure(base.builtin, undefined, signal);
      const builtAt = this.d.builtins.get(base.builtin).builtAt ?? 0;
      return { chain: [{ id: `builtin:${base.builtin}@${builtAt}`, path: rootfs }], config: this.builtinConfig(base.builtin) };
    }
    return { chain: this.chain(base.user.layers!), config: base.user.config ?? EMPTY_CONFIG };
  }

  /** Chain ids to trees on disk. */
  private chain(ids: string[]): ChainLayer[] {
    return ids.map((id) => {
      if (id.startsWith('builtin:')) {
        const { name, builtAt } = parseBuiltinId(id);
        return { id, path: this.d.builtins.rootfsForBuild(name, builtAt) };
      }
      return { id, path: this.d.layers.path(id) };
    });
  }
}

function parseBuiltinId(id: string): { name: string; builtAt: number } {
  const m = /^builtin:([a-z0-9._-]+)@(\d+)$/.exec(id);
  if (!m) throw new InvalidArgumentError(`not a built-in layer id: ${id}`);
  return { name: m[1]!, builtAt: Number(m[2]) };
}

function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}
