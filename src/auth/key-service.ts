/**
 * API keys as callers see them: every method takes the caller's
 * RequestContext and only admins get past the door. The KeyStore below it
 * stays the data layer (also used by the auth hook to verify secrets).
 */
import type { RequestContext } from './context.js';
import type { ApiKey, KeyFormat, KeyLimits, KeyStore } from './keys.js';
import { ConflictError, PermissionDeniedError } from '../errors/index.js';

export interface CreateKeyInput {
  name: string;
  owner?: string | undefined;
  admin?: boolean | undefined;
  limits?: Partial<KeyLimits> | undefined;
  format?: KeyFormat | undefined;
}

export class KeyService {
  /** `store` is null when authentication is off (`--no-auth`). */
  constructor(private readonly store: KeyStore | null) {}

  create(ctx: RequestContext, input: CreateKeyInput): { key: ApiKey; secret: string } {
    return this.door(ctx).create(stripUndefined(input) as { name: string });
  }

  list(ctx: RequestContext): ApiKey[] {
    return this.door(ctx).list();
  }

  revoke(ctx: RequestContext, id: string): ApiKey {
    return this.door(ctx).revoke(id);
  }

  private door(ctx: RequestContext): KeyStore {
    if (!this.store) throw new ConflictError('authentication is off (--no-auth): there are no keys to manage');
    if (!ctx.principal.admin) throw new PermissionDeniedError('managing keys needs an admin key');
    return this.store;
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
