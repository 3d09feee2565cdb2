/**
 * Who may use a sandbox's in-sandbox API. E2B's SDK sends no API key there: it proves itself with
 * the sandbox's access token (`X-Access-Token`), a signed file URL, or, for the code interpreter,
 * the traffic token. A caller that passes acts as the sandbox's owner, so every service call below
 * gets a RequestContext like any API caller's and the services' own checks apply.
 */
import type { FastifyRequest } from 'fastify';
import type { Services } from '../api/services.js';
import { SYSTEM_CONTEXT, requestContext, type RequestContext } from '../auth/context.js';
import { ANONYMOUS_ADMIN, type Principal } from '../auth/principal.js';
import { ConflictError, UnauthenticatedError, isCapsuleError } from '../errors/index.js';
import type { SandboxRecord } from '../sandboxes/store.js';
import { BY_SIGNATURE } from './routing.js';
import type { E2bTokens, FileOperation } from './tokens.js';

export interface EnvdCaller {
  id: string;
  rec: SandboxRecord;
  ctx: RequestContext;
}

/** What a request may present besides the access token. */
export interface Credentials {
  /** The code interpreter's calls: the traffic token (the sandbox's port token) opens them too. */
  traffic?: boolean;
  /** A file route: a signed URL for this path, operation and user opens it too. */
  file?: { path: string; operation: FileOperation; user: string | undefined; signature: string | undefined; expiration: number | undefined };
}

/** The error a request for a sandbox that is not running gets (envd: 502; Connect: unavailable). */
function notRunning(id: string, state: string): ConflictError {
  return new ConflictError(`sandbox ${id} is not running`, { state });
}

/** The owner's view: what the services check a caller against. */
function ownerPrincipal(rec: SandboxRecord): Principal {
  if (rec.owner === null) return ANONYMOUS_ADMIN;
  return { keyId: null, owner: rec.owner, createAs: rec.owner, admin: false, limits: { maxSandboxes: null, maxMemoryMb: null, ratePerMinute: null } };
}

export class EnvdAuth {
  constructor(
    private readonly s: Services,
    readonly tokens: E2bTokens,
  ) {}

  /** The sandbox behind an id, whatever its state; unknown ones look like ended ones. */
  record(id: string): SandboxRecord {
    try {
      return this.s.sandboxes.get(SYSTEM_CONTEXT, id);
    } catch (err) {
      if (isCapsuleError(err) && err.code === 'not_found') throw notRunning(id, 'unknown');
      throw err;
    }
  }

  /** Checks the request's credentials for sandbox `id` (or finds the sandbox a signed URL is for). */
  authorize(req: FastifyRequest, id: string, creds: Credentials = {}): EnvdCaller {
    const rec = id === BY_SIGNATURE ? this.bySignature(creds) : this.record(id);
    const token = header(req, 'x-access-token');
    const ok =
      this.tokens.checkEnvd(rec.id, token) ||
      (creds.traffic === true && this.s.network.checkPortToken(rec.id, header(req, 'e2b-traffic-access-token'))) ||
      (creds.file?.signature !== undefined && this.tokens.checkSignature(rec.id, { ...creds.file, signature: creds.file.signature }));
    if (!ok) {
      const expired = creds.file?.expiration !== undefined && creds.file.expiration * 1000 < Date.now();
      throw new UnauthenticatedError(expired ? 'the signed URL has expired' : `missing or invalid access token for sandbox ${rec.id} (X-Access-Token, or a signed URL)`);
    }
    return { id: rec.id, rec, ctx: requestContext(ownerPrincipal(rec), String(req.id)) };
  }

  /** A running sandbox's caller, for everything that acts inside it (paused ones wake only with autoResume, in the services). */
  running(req: FastifyRequest, id: string, creds: Credentials = {}): EnvdCaller {
    const c = this.authorize(req, id, creds);
    if (c.rec.state !== 'running' && !c.rec.lifecycle.autoResume) throw notRunning(c.id, c.rec.state);
    return c;
  }

  /** The live sandbox whose access token signed this URL (the URL names no sandbox). */
  private bySignature(creds: Credentials): SandboxRecord {
    const f = creds.file;
    if (!f?.signature) throw new UnauthenticatedError('a file URL without a sandbox needs a signature');
    for (const rec of this.s.sandboxes.list(SYSTEM_CONTEXT)) {
      if (this.tokens.checkSignature(rec.id, { ...f, signature: f.signature, expiration: f.expiration }, 0)) return rec;
    }
    throw new UnauthenticatedError('the signature matches no running sandbox');
  }
}

function header(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name];
  return typeof v === 'string' ? v.trim() : undefined;
}
