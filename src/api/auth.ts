/**
 * Authentication at the HTTP edge: every request except the public ones must
 * carry `Authorization: Bearer <key>` (or `X-API-Key: <key>`, as E2B's SDKs send it); the key resolves to a Principal that
 * routes pass to the services as the owner to scope by. Revocation is checked
 * on every request (one indexed SQLite lookup), so a revoked key stops at once.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { KeyStore } from '../auth/keys.js';
import { ANONYMOUS_ADMIN, type Principal } from '../auth/principal.js';
import type { RateLimiter } from '../auth/rate-limit.js';
import { RateLimitedError, UnauthenticatedError } from '../errors/index.js';
import { isPortPath } from '../network/ports.js';
import { isEnvdPath } from '../e2b/routing.js';

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal;
  }
}

/** Reachable without a key: liveness and the API description. */
export const PUBLIC_PATHS = new Set(['/v1/health', '/v1/openapi.json']);

export interface AuthOptions {
  /** null: authentication is off (`--no-auth`), every caller is an admin. */
  keys: KeyStore | null;
  limiter: RateLimiter;
  /** More paths reachable without a key, by the operator's choice (/metrics with --metrics-open). */
  open?: readonly string[];
}

export function installAuth(app: FastifyInstance, opts: AuthOptions): void {
  app.decorateRequest('principal', null as unknown as Principal);
  // A callback hook, not an async one: no promise per request on the hot path.
  app.addHook('onRequest', (req, _reply, done) => {
    try {
      req.principal = authenticate(req, opts);
    } catch (err) {
      done(err as Error);
      return;
    }
    done();
  });
}

function authenticate(req: FastifyRequest, opts: AuthOptions): Principal {
  if (!opts.keys) return ANONYMOUS_ADMIN;
  const path = req.url.split('?', 1)[0]!;
  // Port requests carry a port token, checked by the port proxy (src/network/ports.ts), not an API key;
  // E2B's in-sandbox requests carry the sandbox's access token, checked by the adapter (src/e2b/envd-auth.ts).
  if (PUBLIC_PATHS.has(path) || opts.open?.includes(path) || isPortPath(path) || isEnvdPath(path)) return { ...ANONYMOUS_ADMIN, admin: false };
  return principalOf(presentedSecret(req), opts);
}

/** The key a request presents: `Authorization: Bearer <key>`, or `X-API-Key: <key>`. */
export function presentedSecret(req: Pick<FastifyRequest, 'headers'>): string | undefined {
  const header = req.headers.authorization;
  const m = typeof header === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
  const apiKey = req.headers['x-api-key'];
  return m?.[1] ?? (typeof apiKey === 'string' ? apiKey.trim() || undefined : undefined);
}

/**
 * The principal of a presented key: verified (a revoked key stops at once) and charged one request
 * against its rate limit. Every HTTP request comes here, and so does every message on the command
 * channel (api/channel.ts), which keeps the key it was opened with.
 */
export function principalOf(secret: string | undefined, opts: Pick<AuthOptions, 'keys' | 'limiter'>): Principal {
  if (!opts.keys) return ANONYMOUS_ADMIN;
  if (!secret) throw new UnauthenticatedError();
  const key = opts.keys.verify(secret);
  if (!key) throw new UnauthenticatedError('invalid or revoked API key');
  const rate = key.limits.ratePerMinute;
  if (rate !== null && !opts.limiter.take(key.id, rate)) {
    throw new RateLimitedError(`key ${key.name} is over its limit of ${rate} requests per minute; retry in a few seconds`, { ratePerMinute: rate });
  }
  return { keyId: key.id, owner: key.admin ? null : key.owner, createAs: key.owner, admin: key.admin, limits: key.limits };
}
