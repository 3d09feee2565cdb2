/**
 * The volume service: named, owner-scoped persistent disks (create, list,
 * get, delete), and the lookup the sandbox service does when a create asks
 * to attach volumes. A caller only ever names its own volumes: names resolve
 * in the owner the caller creates as, and a volume the caller may not see is
 * "not found". Nothing here takes a host path: the disk is the runtime's
 * (prepareVolume / removeVolume), named by the volume's id.
 *
 * In use means attached to any live sandbox (running, paused, stopped, or
 * being created); such a volume cannot be deleted (409 naming the sandboxes).
 * The check and the row's removal happen in one synchronous step, and a
 * create checks its volumes again in the step that writes its row, so a
 * delete and a create never both win.
 */
import type { RuntimeDriver } from '../runtime/types.js';
import { canSee, ownerFor, type RequestContext } from '../auth/context.js';
import { ConflictError, InvalidArgumentError, NotFoundError } from '../errors/index.js';
import { newVolumeId } from '../sandboxes/ids.js';
import { requireCapability } from '../sandboxes/spec.js';
import { volumesBackend } from '../runtime/backends.js';
import type { SandboxStore, SandboxVolume } from '../sandboxes/store.js';
import type { Volume, VolumeMountRequest } from '../schemas/volumes.js';
import type { VolumeRecord, VolumeStore } from './store.js';

interface Logger {
  error(obj: unknown, msg?: string): void;
}

export class VolumeService {
  constructor(
    private readonly store: VolumeStore,
    private readonly sandboxes: SandboxStore,
    private readonly runtime: RuntimeDriver,
    /** The operator's ceiling on any disk (CAPSULE_MAX_DISK_MB). */
    private readonly maxDiskMb: number,
    private readonly log: Logger,
  ) {}

  async create(ctx: RequestContext, req: { name: string; sizeMb: number }): Promise<Volume> {
    requireCapability(volumesBackend(this.runtime), 'volumes', 'create a volume');
    if (req.sizeMb > this.maxDiskMb) {
      throw new InvalidArgumentError(`sizeMb must be at most ${this.maxDiskMb} on this daemon (CAPSULE_MAX_DISK_MB)`, { max: this.maxDiskMb });
    }
    const rec: VolumeRecord = { id: newVolumeId(), owner: ownerFor(ctx), name: req.name, sizeMb: req.sizeMb, createdAt: Date.now() };
    if (!this.store.insert(rec)) throw new ConflictError(`volume ${req.name} already exists`, { name: req.name });
    try {
      // Made now, so a bad size or a full host fails here rather than at the first sandbox.
      await this.runtime.prepareVolume(rec.id, rec.sizeMb);
    } catch (err) {
      this.store.delete(rec.id);
      await this.runtime.removeVolume(rec.id).catch((e: unknown) => this.log.error({ err: e, id: rec.id }, 'cleanup of a failed volume failed'));
      throw err;
    }
    return this.view(rec);
  }

  /** The caller's volumes (an admin's: everyone's). */
  list(ctx: RequestContext): Volume[] {
    const recs = ctx.principal.admin ? this.store.list() : this.store.list(ownerFor(ctx));
    return recs.filter((r) => canSee(ctx, r.owner)).map((r) => this.view(r));
  }

  get(ctx: RequestContext, name: string): Volume {
    return this.view(this.find(ctx, name));
  }

  /** Delete a volume and its data; 409 while a live sandbox attaches it. */
  async remove(ctx: RequestContext, name: string): Promise<void> {
    const rec = this.find(ctx, name);
    const users = this.sandboxes.usingVolume(rec.id);
    if (users.length > 0) {
      throw new ConflictError(`volume ${name} is in use by ${users.length === 1 ? 'sandbox' : 'sandboxes'} ${users.join(', ')}: kill them first`, {
        name,
        sandboxes: users,
      });
    }
    this.store.delete(rec.id);
    await this.runtime.removeVolume(rec.id);
  }

  /** For a create: the caller's volumes behind the names asked, as the sandbox records them. */
  resolve(ctx: RequestContext, mounts: readonly VolumeMountRequest[]): SandboxVolume[] {
    if (mounts.length === 0) return [];
    // Whether this sandbox's own backend can attach them is the manager's check (backendFor).
    requireCapability(volumesBackend(this.runtime), 'volumes', 'attach volumes');
    return mounts.map((m) => {
      const v = this.find(ctx, m.name);
      return { volumeId: v.id, name: v.name, sizeMb: v.sizeMb, path: m.path, readOnly: m.readOnly };
    });
  }

  /** Right before a sandbox row is written (same synchronous step): each volume still exists. */
  stillThere(volumes: readonly SandboxVolume[]): void {
    for (const v of volumes) if (!this.store.byId(v.volumeId)) throw new NotFoundError(`volume ${v.name} was deleted`, { name: v.name });
  }

  private find(ctx: RequestContext, name: string): VolumeRecord {
    const rec = this.store.byName(ownerFor(ctx), name);
    if (!rec || !canSee(ctx, rec.owner)) throw new NotFoundError(`volume ${name} not found`, { name });
    return rec;
  }

  private view(r: VolumeRecord): Volume {
    return { id: r.id, name: r.name, sizeMb: r.sizeMb, createdAt: new Date(r.createdAt).toISOString(), usedBy: this.sandboxes.usingVolume(r.id) };
  }
}
