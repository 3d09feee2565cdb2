import type { KeyLimits } from './keys.js';

/** Who is calling: resolved once per request from its API key. */
export interface Principal {
  keyId: string | null;
  /** Tenant whose sandboxes this caller sees; null for admins and when auth is off (they see everything). */
  owner: string | null;
  /** The owner recorded on what this caller creates. */
  createAs: string | null;
  admin: boolean;
  limits: KeyLimits;
}

export const ANONYMOUS_ADMIN: Principal = {
  keyId: null,
  owner: null,
  createAs: null,
  admin: true,
  limits: { maxSandboxes: null, maxMemoryMb: null, ratePerMinute: null },
};
