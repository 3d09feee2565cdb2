/**
 * API keys. A key is shown once when it is made; only its SHA-256 is stored,
 * so the database never holds anything that opens the API. Each key belongs
 * to an owner (tenant): sandboxes carry their creator's owner, and a key sees
 * only its owner's sandboxes unless it is an admin key.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Db } from '../store/db.js';
import { statementCache, type Statements } from '../store/statements.js';
import { NotFoundError } from '../errors/index.js';

export interface KeyLimits {
  /** Live sandboxes at once; null = no limit. */
  maxSandboxes: number | null;
  /** Sum of memoryMb over live sandboxes; null = no limit. */
  maxMemoryMb: number | null;
  /** Requests per minute; null = no limit. */
  ratePerMinute: number | null;
}

export interface ApiKey {
  id: string;
  name: string;
  owner: string;
  admin: boolean;
  limits: KeyLimits;
  createdAt: number;
  revokedAt: number | null;
}

interface KeyRow {
  id: string;
  name: string;
  owner: string;
  admin: number;
  max_sandboxes: number | null;
  max_memory_mb: number | null;
  rate_per_minute: number | null;
  created_at: number;
  revoked_at: number | null;
}

/** Limits a new non-admin key gets unless told otherwise. */
export const DEFAULT_KEY_LIMITS: KeyLimits = { maxSandboxes: 50, maxMemoryMb: 16 * 1024, ratePerMinute: 3000 };

const KEY_PREFIX = 'cap_';
/** E2B's key format (`e2b_` + 40 hex digits), for clients that check it: `capsule keys create --e2b`. */
const E2B_KEY_PREFIX = 'e2b_';

/** How a new key's secret looks; both verify the same way (only the hash is stored). */
export type KeyFormat = 'capsule' | 'e2b';

function newSecret(format: KeyFormat): string {
  return format === 'e2b' ? E2B_KEY_PREFIX + randomBytes(20).toString('hex') : KEY_PREFIX + randomBytes(32).toString('base64url');
}

export function hashKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

function fromRow(r: KeyRow): ApiKey {
  return {
    id: r.id,
    name: r.name,
    owner: r.owner,
    admin: r.admin === 1,
    limits: { maxSandboxes: r.max_sandboxes, maxMemoryMb: r.max_memory_mb, ratePerMinute: r.rate_per_minute },
    createdAt: r.created_at,
    revokedAt: r.revoked_at,
  };
}

/**
 * Verified keys are remembered for a moment: hashing the secret and looking it
 * up in SQLite cost ~25 µs of every request (a tenth of the daemon's work on an
 * exec). Revoking or creating a key through this store clears the cache, so a
 * revoked key stops at its next request; a row changed behind the daemon's back
 * (another process editing the database) is seen within VERIFY_CACHE_MS.
 */
const VERIFY_CACHE_MS = 5000;
const VERIFY_CACHE_MAX = 1024;

export class KeyStore {
  private readonly sql: Statements;
  private readonly verified = new Map<string, { key: ApiKey; until: number }>();

  constructor(db: Db) {
    this.sql = statementCache(db);
  }

  /** Makes a key; the returned `secret` is never stored and cannot be shown again. */
  create(opts: { name: string; owner?: string; admin?: boolean; limits?: Partial<KeyLimits>; format?: KeyFormat }): { key: ApiKey; secret: string } {
    const secret = newSecret(opts.format ?? 'capsule');
    const admin = opts.admin === true;
    const base: KeyLimits = admin ? { maxSandboxes: null, maxMemoryMb: null, ratePerMinute: null } : DEFAULT_KEY_LIMITS;
    const limits: KeyLimits = { ...base, ...Object.fromEntries(Object.entries(opts.limits ?? {}).filter(([, v]) => v !== undefined)) };
    const key: ApiKey = {
      id: `key_${randomBytes(8).toString('hex')}`,
      name: opts.name,
      owner: opts.owner ?? opts.name,
      admin,
      limits,
      createdAt: Date.now(),
      revokedAt: null,
    };
    this
      .sql(
        `INSERT INTO api_keys (id, name, owner, hash, admin, max_sandboxes, max_memory_mb, rate_per_minute, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(key.id, key.name, key.owner, hashKey(secret), admin ? 1 : 0, limits.maxSandboxes, limits.maxMemoryMb, limits.ratePerMinute, key.createdAt);
    return { key, secret };
  }

  /** The live key for a presented secret; revoked and unknown keys are the same: undefined. */
  verify(secret: string, now = Date.now()): ApiKey | undefined {
    if (!(secret.startsWith(KEY_PREFIX) || secret.startsWith(E2B_KEY_PREFIX)) || secret.length > 200) return undefined;
    const hit = this.verified.get(secret);
    if (hit && hit.until > now) return hit.key;
    const row = this.sql('SELECT * FROM api_keys WHERE hash = ? AND revoked_at IS NULL').get(hashKey(secret)) as KeyRow | undefined;
    if (!row) {
      this.verified.delete(secret);
      return undefined;
    }
    const key = fromRow(row);
    // Only live keys are remembered, so guessing secrets cannot fill the cache.
    if (this.verified.size >= VERIFY_CACHE_MAX) this.verified.delete(this.verified.keys().next().value as string);
    this.verified.set(secret, { key, until: now + VERIFY_CACHE_MS });
    return key;
  }

  list(): ApiKey[] {
    return (this.sql('SELECT * FROM api_keys ORDER BY created_at').all() as KeyRow[]).map(fromRow);
  }

  revoke(id: string): ApiKey {
    this.verified.clear();
    this.sql('UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL').run(Date.now(), id);
    const row = this.sql('SELECT * FROM api_keys WHERE id = ?').get(id) as KeyRow | undefined;
    if (!row) throw new NotFoundError(`key ${id} not found`, { id });
    return fromRow(row);
  }

  hasAdmin(): boolean {
    return this.sql('SELECT 1 FROM api_keys WHERE admin = 1 AND revoked_at IS NULL LIMIT 1').get() !== undefined;
  }
}
