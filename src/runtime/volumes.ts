/**
 * Named volumes for the OCI driver: each is its own sparse ext4 image on a
 * loop device (the sandbox-disk machinery of ADR 0003, via
 * native/capsule-mount volume-mount), mounted once on the host at
 * `<data>/volumes/<id>/mnt` and bound (`mnt/data`) into every sandbox that
 * attaches it. The mount outlives sandboxes and daemon restarts; after a host
 * reboot the next create or start that attaches the volume mounts it again.
 *
 * Which volumes a sandbox attaches is written into its dir at create
 * (`volumes.json`), so a start, which only has the id, mounts them first: a
 * bind of an unmounted volume fails (its data/ exists only inside the mounted
 * filesystem) rather than writing into the host's disk.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { DataPaths } from '../config/index.js';
import { InvalidArgumentError } from '../errors/index.js';
import { mountVolume, unmountVolume, type MountHelperOptions } from './mounts.js';
import { removeSandboxDir } from './overlay.js';
import type { VolumeAttachment } from './types.js';

export const VOLUME_ID_RE = /^vol-[a-z0-9]{12}$/;

/** In a sandbox dir: the volumes it attaches, for start. */
const VOLUMES_FILE = 'volumes.json';

/** Paths a volume may not cover: the runtime's own mounts, the agent, and the root itself. */
const RESERVED = ['/', '/proc', '/sys', '/dev', '/.capsule'];

/** Refuses a target that is not an absolute, normalized path outside the reserved ones. */
export function checkTarget(target: string): void {
  const bad = (why: string) => new InvalidArgumentError(`volume path ${JSON.stringify(target)} ${why}`, { path: target });
  if (!target.startsWith('/') || target.includes('\0')) throw bad('must be an absolute path');
  if (path.posix.normalize(target) !== target || target.endsWith('/') || target.split('/').includes('..')) throw bad('must be normalized (no .., //, or trailing /)');
  for (const r of RESERVED) if (target === r || (r !== '/' && target.startsWith(`${r}/`))) throw bad(`may not be ${r === '/' ? '/' : `${r} or below it`}`);
}

function checkVolumeId(id: string): void {
  if (!VOLUME_ID_RE.test(id)) throw new InvalidArgumentError(`invalid volume id ${JSON.stringify(id)}`);
}

export class VolumeDisks {
  /** One prepare or remove per volume at a time. */
  private readonly busy = new Map<string, Promise<unknown>>();

  constructor(
    private readonly paths: DataPaths,
    /** Host uid of sandbox root: owner of each volume's data/. */
    private readonly owner: number,
    private readonly mountOpts: () => MountHelperOptions,
  ) {}

  /** The host directory a sandbox binds for this volume. */
  source(id: string): string {
    checkVolumeId(id);
    return path.join(this.paths.volumeDir(id), 'mnt', 'data');
  }

  prepare(id: string, sizeMb: number): Promise<void> {
    checkVolumeId(id);
    return this.one(id, async () => {
      await fsp.mkdir(this.paths.volumes, { recursive: true, mode: 0o711 });
      await mountVolume({ dir: this.paths.volumeDir(id), diskMb: sizeMb, owner: this.owner, imageCache: this.paths.diskImages }, this.mountOpts());
    });
  }

  remove(id: string): Promise<void> {
    checkVolumeId(id);
    return this.one(id, async () => {
      const dir = this.paths.volumeDir(id);
      await unmountVolume(dir, this.mountOpts());
      // Refuses while anything is still mounted below it.
      await removeSandboxDir(dir);
    });
  }

  /** Record (at create) and read back (at start) the volumes a sandbox attaches. */
  async record(sandboxDir: string, volumes: readonly VolumeAttachment[]): Promise<void> {
    if (volumes.length === 0) return;
    await fsp.writeFile(path.join(sandboxDir, VOLUMES_FILE), JSON.stringify(volumes), { mode: 0o600 });
  }

  recorded(sandboxDir: string): VolumeAttachment[] {
    const file = path.join(sandboxDir, VOLUMES_FILE);
    if (!fs.existsSync(file)) return [];
    return JSON.parse(fs.readFileSync(file, 'utf8')) as VolumeAttachment[];
  }

  private one<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const before = this.busy.get(id);
    const run = before ? before.then(fn, fn) : fn();
    const tracked: Promise<unknown> = run.finally(() => {
      if (this.busy.get(id) === tracked) this.busy.delete(id);
    });
    tracked.catch(() => undefined);
    this.busy.set(id, tracked);
    return run;
  }
}
