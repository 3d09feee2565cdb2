import { z } from 'zod';
import { Timestamp } from './common.js';

const Limit = z.number().int().min(0).max(1_000_000_000).nullable();

export const KeyLimitsSchema = z.object({
  maxSandboxes: Limit.optional().describe('Live sandboxes at once (null: no limit)'),
  maxMemoryMb: Limit.optional().describe('Total memoryMb of live sandboxes (null: no limit)'),
  ratePerMinute: Limit.optional().describe('API requests per minute (null: no limit)'),
});

export const CreateKeyRequest = z
  .object({
    name: z.string().min(1).max(64).regex(/^[A-Za-z0-9_.-]+$/).describe('A label for the key'),
    owner: z.string().min(1).max(64).regex(/^[A-Za-z0-9_.-]+$/).optional().describe('Tenant the key acts for; default: the name. Keys of one owner see the same sandboxes'),
    admin: z.boolean().optional().describe('Admin keys see and manage everything, including keys'),
    limits: KeyLimitsSchema.strict().optional(),
    format: z.enum(['capsule', 'e2b']).optional().describe("How the secret looks: capsule (cap_…, default) or e2b (e2b_ + 40 hex digits, E2B's format, for the E2B-compatible API at /e2b)"),
  })
  .strict();

export const ApiKeyInfo = z.object({
  id: z.string(),
  name: z.string(),
  owner: z.string(),
  admin: z.boolean(),
  limits: z.object({ maxSandboxes: z.number().nullable(), maxMemoryMb: z.number().nullable(), ratePerMinute: z.number().nullable() }),
  createdAt: Timestamp,
  revokedAt: Timestamp.optional(),
});
export const CreateKeyResponse = ApiKeyInfo.extend({ key: z.string().describe('The secret: shown once, store it now') });
export const ListKeysResponse = z.object({ keys: z.array(ApiKeyInfo) });
export const KeyParams = z.object({ keyId: z.string().regex(/^key_[0-9a-f]{16}$/) });
