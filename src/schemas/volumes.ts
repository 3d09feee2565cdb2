/** Named volumes: persistent, owner-scoped disks attached to sandboxes at create. */
import { z } from 'zod';
import { Timestamp } from './common.js';

export const VolumeName = z
  .string()
  .min(1)
  .max(63)
  .regex(/^[a-z0-9][a-z0-9._-]*$/, 'volume names are lowercase letters, digits, . _ - (starting with a letter or digit)')
  .describe("Volume name, unique among its owner's volumes");

export const CreateVolumeRequest = z
  .object({
    name: VolumeName,
    sizeMb: z
      .number()
      .int()
      .min(16)
      .max(1024 * 1024)
      .default(1024)
      .describe("Disk quota in MiB (a sparse image: only what is written takes host space); writes past it fail with ENOSPC. Default 1024; the daemon's CAPSULE_MAX_DISK_MB caps it"),
  })
  .strict();
export type CreateVolumeRequest = z.infer<typeof CreateVolumeRequest>;

export const Volume = z.object({
  id: z.string().describe('Volume id, e.g. vol-4k2m9q0c7d1a'),
  name: VolumeName,
  sizeMb: z.number().describe('Disk quota in MiB'),
  createdAt: Timestamp,
  usedBy: z.array(z.string()).describe('Live sandboxes (running, paused or stopped) that attach it; it cannot be deleted while any does'),
});
export type Volume = z.infer<typeof Volume>;

export const ListVolumesResponse = z.object({ volumes: z.array(Volume) });
export const VolumeParams = z.object({ name: VolumeName });

/** How a create attaches a volume. */
export const VolumeMountRequest = z
  .object({
    name: VolumeName.describe("The volume to attach (one of the caller's)"),
    path: z
      .string()
      .min(2)
      .max(4096)
      .regex(/^\/[^\0]*$/, 'must be an absolute path')
      .refine((p) => !p.endsWith('/') && !p.split('/').slice(1).some((s) => s === '' || s === '.' || s === '..'), 'must be normalized (no .., ., // or trailing /)')
      .refine((p) => !['/proc', '/sys', '/dev', '/.capsule'].some((r) => p === r || p.startsWith(`${r}/`)), 'may not be /proc, /sys, /dev, /.capsule or below them')
      .describe('Where it appears inside the sandbox, e.g. /data'),
    readOnly: z.boolean().default(false).describe('Attach it read-only: writes fail with EROFS'),
  })
  .strict();
export type VolumeMountRequest = z.infer<typeof VolumeMountRequest>;
