/**
 * envd's HTTP routes (spec/envd/envd.yaml in e2b-dev/E2B): file download and upload, with the
 * query a signed URL carries; the answers of /envs and /metrics; envd's error body.
 */
import { z } from 'zod';
import { LIMITS } from '../common.js';

export const User = z.string().min(1).max(64).regex(/^[A-Za-z0-9_.-]+$/, 'a user name is letters, digits, _ . -');

export const FilesQuery = z.object({
  path: z.string().max(LIMITS.maxPath).refine((s) => !s.includes('\0'), 'must not contain NUL').optional(),
  username: User.optional(),
  signature: z.string().max(200).optional(),
  signature_expiration: z.coerce.number().int().min(0).optional(),
});
export type FilesQuery = z.infer<typeof FilesQuery>;

/** What an upload answers per file. */
export const UploadedEntry = z.object({ path: z.string(), name: z.string(), type: z.literal('file') });

export const EnvdMetrics = z.object({
  ts: z.number().int(),
  cpu_count: z.number(),
  cpu_used_pct: z.number(),
  mem_total: z.number().int(),
  mem_used: z.number().int(),
  mem_total_mib: z.number().int(),
  mem_used_mib: z.number().int(),
  disk_used: z.number().int(),
  disk_total: z.number().int(),
});

/** envd's error body. */
export const EnvdError = z.object({ code: z.number().int(), message: z.string() });
