/**
 * The snapshot service: filesystem snapshots of sandboxes as immutable layers
 * in the layer store (kind `snapshot`), and the lookup a create does when it
 * starts from one. REST, the SDK, the CLI and the MCP tools call these methods
 * with the caller's RequestContext; nothing here knows a transport.
 *
 * - **Taking one** runs as a lifecycle operation of the sandbox
 *   (SandboxManager.snapshotFiles: queued behind any pause, resume, stop or
 *   start; a running sandbox is `snapshotting` and frozen while its writable
 *   layer is copied, a paused one stays paused). The copy is the overlay upper
 *   dir with its whiteouts, exactly what a template build step keeps, so it
 *   stacks on the sandbox's own chain without being merged.
 * - **A chain is self-contained**: a snapshot records every layer below its
 *   own (template layers, and those of the snapshot its sandbox started
 *   from), so deleting a parent snapshot never breaks a child; layers are
 *   reference-counted by the layer store's prune (held by any template or
 *   snapshot chain, or by a sandbox sitting on them).
 * - **Deleting one is refused (409) while a live sandbox was started from
 *   it**, as for volumes and templates: the check and the row's removal are one
 *   synchronous step, and a create checks the snapshot again in the step that
 *   writes its row (`stillThere`).
 * - **Owners**: a snapshot belongs to its sandbox's owner; others get 404.
 */
import type { RequestContext } from '../auth/context.js';
import { canSee, ownerFor } from '../auth/context.js';
import { ConflictError, NotFoundError, UnsupportedError } from '../errors/index.js';
import { layerDigest, type LayerStore } from '../layers/store.js';
import type { LayerRef, RuntimeDriver } from '../runtime/types.js';
import type { SandboxManager, ResolvedSnapshot, SnapshotResolver } from '../sandboxes/manager.js';
import { newSnapshotId } from '../sandboxes/ids.js';
import type { SandboxRecord, SandboxStore } from '../sandboxes/store.js';
import { requireCapability } from '../sandboxes/spec.js';
import { backendOf } from '../runtime/backends.js';
import { SNAPSHOT_ID_RE, type Snapshot } from '../schemas/snapshots.js';
import type { SnapshotRecord, SnapshotStore } from './store.js';

interface Logger {
  info(obj: unknown, msg?: string): void;
  warn(obj: unknown, msg?: string): void;
}

export interface SnapshotDeps {
  store: SnapshotStore;
  sandboxStore: SandboxStore;
  sandboxes: SandboxManager;
  runtime: RuntimeDriver;
  layers: LayerStore;
  /** Layer ids to the trees a sandbox stacks (TemplateCatalog.chainRefs). */
  chainRefs: (ids: readonly string[]) => LayerRef[];
  /** Remove layers nothing holds any more (TemplateCatalog.prune). */
  prune: () => Promise<unknown>;
  log: Logger;
}

export class SnapshotService implements SnapshotResolver {
  /** Digests of snapshot layers committed but not yet recorded in a row: pruning must not take them. */
  private readonly making = new Set<string>();

  constructor(private readonly d: SnapshotDeps) {}

  /** Take a snapshot of the sandbox's files. Its owner is the sandbox's owner. */
  async take(
    ctx: RequestContext,
    sandboxId: string,
    req: { name?: string | undefined; metadata?: Record<string, string> | undefined },
    /** What copies the files into the draft, with the sandbox held still; default the runtime's exportChanges. */
    capture?: (dest: string) => Promise<void>,
  ): Promise<Snapshot> {
    const rec = this.d.sandboxes.get(ctx, sandboxId);
    if (rec.layers.length === 0) {
      throw new UnsupportedError(`sandbox ${sandboxId} was created before snapshots existed (its layers are not recorded): snapshot a newer sandbox`, { id: sandboxId });
    }
    const name = req.name ?? null;
    // Checked before the sandbox is frozen for nothing; the unique index decides a race.
    if (name !== null && this.d.store.byName(rec.owner, name)) throw new ConflictError(`snapshot ${name} already exists`, { name });
    const id = newSnapshotId();
    const digest = layerDigest({ snapshot: id });
    this.making.add(digest);
    const started = performance.now();
    try {
      const draft = await this.d.layers.draft();
      let source: SandboxRecord;
      try {
        source = await this.d.sandboxes.snapshotFiles(ctx, sandboxId, async (live) => {
          if (capture) await capture(draft.dir);
          else await this.d.runtime.exportChanges(sandboxId, draft.dir);
          return live;
        });
      } catch (err) {
        await draft.abort();
        throw err;
      }
      // Outside the frozen window: measuring and renaming the copy.
      const layer = await draft.commit({
        digest,
        parent: source.layers[source.layers.length - 1] ?? null,
        kind: 'snapshot',
        description: `snapshot ${name ?? id} of sandbox ${sandboxId}`,
      });
      const snap: SnapshotRecord = {
        id,
        owner: source.owner,
        name,
        sandboxId,
        template: source.template,
        parentSnapshot: source.snapshot,
        layer: digest,
        chain: [...source.layers, digest],
        config: {
          env: { ...source.envs },
          ...(source.defaults.cwd ? { workdir: source.defaults.cwd } : {}),
          ...(source.defaults.user ? { user: source.defaults.user } : {}),
          ...(source.defaults.setuid ? { sudo: true } : {}),
        },
        metadata: req.metadata ?? {},
        sizeBytes: layer.sizeBytes,
        createdAt: Date.now(),
      };
      if (!this.d.store.insert(snap)) throw new ConflictError(`snapshot ${name} already exists`, { name });
      this.d.log.info({ id, sandboxId, sizeBytes: layer.sizeBytes, ms: Math.round(performance.now() - started) }, 'snapshot taken');
      return this.view(snap);
    } finally {
      this.making.delete(digest);
      // A layer made for a snapshot that was not recorded is nobody's: remove it now rather than at the next prune.
      if (!this.d.store.byId(id)) void this.pruneQuietly();
    }
  }

  /**
   * Fork a running sandbox into `count` new ones. Always through a filesystem snapshot of it (kept, listed,
   * metadata `forkOf`), from which each fork starts with its own copy-on-write layer. With `memory`, the
   * snapshot's files and a CRIU checkpoint of every process are taken in the same frozen instant (the source
   * runs on), and each fork's own processes give way to that checkpoint: every fork continues from the same
   * instant with its own id, hostname, files and cgroup (docs/adr/0018-memory-snapshots.md). Forks get the
   * source's resources, timeout, lifecycle policy and metadata (plus `forkOf`); not its volumes or network.
   * A fork that fails is killed, and so are those made before it.
   */
  async fork(ctx: RequestContext, sandboxId: string, req: { count: number; memory: boolean }): Promise<{ snapshot: Snapshot; sandboxes: SandboxRecord[] }> {
    const source = this.d.sandboxes.get(ctx, sandboxId);
    if (req.memory) {
      requireCapability(backendOf(this.d.runtime, sandboxId), 'memorySnapshot', 'fork the sandbox with its memory');
      if (source.state !== 'running') throw new ConflictError(`cannot fork sandbox ${sandboxId} with its memory: it is ${source.state} (resume it first)`, { id: sandboxId, state: source.state });
    }
    const exportWithMemory = this.d.runtime.exportChangesWithMemory?.bind(this.d.runtime);
    let images: string | null = null;
    const snapshot = await this.take(
      ctx,
      sandboxId,
      { metadata: { forkOf: sandboxId } },
      req.memory && exportWithMemory
        ? async (dest) => {
            images = await this.d.sandboxes.withAgentDetached(sandboxId, () => exportWithMemory(sandboxId, dest));
          }
        : undefined,
    );
    const made: SandboxRecord[] = [];
    try {
      for (let i = 0; i < req.count; i++) {
        const rec = await this.d.sandboxes.create(ctx, {
          snapshot: snapshot.id,
          resources: source.resources,
          timeoutMs: source.timeoutMs,
          lifecycle: {
            onTimeout: source.lifecycle.onTimeout,
            autoResume: source.lifecycle.autoResume,
            deleteAfterMs: source.lifecycle.deleteAfterMs,
            ...(source.lifecycle.idleMs !== null ? { idleMs: source.lifecycle.idleMs } : {}),
          },
          metadata: { ...source.metadata, forkOf: sandboxId },
        });
        made.push(rec);
        if (images) await this.d.sandboxes.restoreForkInto(rec.id, images);
      }
      return { snapshot, sandboxes: made.map((r) => this.d.sandboxes.get(ctx, r.id)) };
    } catch (err) {
      for (const r of made) await this.d.sandboxes.kill(ctx, r.id).catch(() => undefined);
      throw err;
    } finally {
      if (images) await this.d.runtime.dropForkImages?.(images);
    }
  }

  /** The caller's snapshots (an admin's: everyone's), optionally only those of one sandbox. */
  list(ctx: RequestContext, filter: { sandboxId?: string | undefined } = {}): Snapshot[] {
    const recs = ctx.principal.admin ? this.d.store.list() : this.d.store.list(ownerFor(ctx));
    return recs.filter((r) => canSee(ctx, r.owner) && (filter.sandboxId === undefined || r.sandboxId === filter.sandboxId)).map((r) => this.view(r));
  }

  get(ctx: RequestContext, ref: string): Snapshot {
    return this.view(this.find(ctx, ref));
  }

  /** Delete a snapshot; 409 while a live sandbox was started from it. Its layer goes once nothing holds it. */
  async remove(ctx: RequestContext, ref: string): Promise<void> {
    const rec = this.find(ctx, ref);
    const users = this.d.sandboxStore.usingSnapshot(rec.id);
    if (users.length > 0) {
      throw new ConflictError(
        `snapshot ${ref} is in use by ${users.length === 1 ? 'sandbox' : 'sandboxes'} ${users.join(', ')} started from it: kill them first`,
        { snapshot: rec.id, sandboxes: users },
      );
    }
    this.d.store.delete(rec.id);
    await this.pruneQuietly();
  }

  // --- for the sandbox service (SnapshotResolver) ----------------------------------

  resolve(ctx: RequestContext, ref: string): ResolvedSnapshot {
    const rec = this.find(ctx, ref);
    return { id: rec.id, template: rec.template, layers: this.d.chainRefs(rec.chain), config: rec.config };
  }

  stillThere(id: string): void {
    if (!this.d.store.byId(id)) throw new NotFoundError(`snapshot ${id} was deleted`, { snapshot: id });
  }

  /** Every layer id a snapshot holds, including those being made (for pruning). */
  heldLayers(): Set<string> {
    const out = this.d.store.referencedLayers();
    for (const d of this.making) out.add(d);
    return out;
  }

  // --- internals --------------------------------------------------------------------

  /** By id (any owner the caller may see) or by name (among the caller's own). Others are "not found". */
  private find(ctx: RequestContext, ref: string): SnapshotRecord {
    const rec = SNAPSHOT_ID_RE.test(ref) ? this.d.store.byId(ref) : this.d.store.byName(ownerFor(ctx), ref);
    if (!rec || !canSee(ctx, rec.owner)) throw new NotFoundError(`snapshot ${ref} not found`, { snapshot: ref });
    return rec;
  }

  private async pruneQuietly(): Promise<void> {
    await this.d.prune().catch((err: unknown) => this.d.log.warn({ err }, 'pruning unused layers failed'));
  }

  private view(r: SnapshotRecord): Snapshot {
    return {
      id: r.id,
      ...(r.name !== null ? { name: r.name } : {}),
      sandboxId: r.sandboxId,
      template: r.template,
      ...(r.parentSnapshot !== null ? { parentSnapshot: r.parentSnapshot } : {}),
      sizeBytes: r.sizeBytes,
      layers: r.chain.length,
      createdAt: new Date(r.createdAt).toISOString(),
      metadata: r.metadata,
      usedBy: this.d.sandboxStore.usingSnapshot(r.id),
    };
  }
}
