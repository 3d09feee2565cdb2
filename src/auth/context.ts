/**
 * RequestContext: who is asking, carried as the required first argument of
 * every service method that touches a sandbox, a template or a key. It can only
 * be made here (the brand), so a transport that forgets to pass the caller's
 * context does not compile, and no service can "skip the check" for want of an
 * owner: the visibility and quota rules live in the services, next to the data.
 */
import { ANONYMOUS_ADMIN, type Principal } from './principal.js';

declare const brand: unique symbol;

export interface RequestContext {
  readonly [brand]: true;
  readonly principal: Principal;
  /** For log lines: the transport's request id, when it has one. */
  readonly requestId: string | undefined;
}

export function requestContext(principal: Principal, requestId?: string): RequestContext {
  return Object.freeze({ principal, requestId }) as unknown as RequestContext;
}

/**
 * The daemon acting for itself (recovery, the reaper, the CLI's embedded MCP
 * server with no key): sees everything, has no quotas.
 */
export const SYSTEM_CONTEXT: RequestContext = requestContext(ANONYMOUS_ADMIN, 'system');

/** Whether the caller may see (and act on) something owned by `owner`. */
export function canSee(ctx: RequestContext, owner: string | null): boolean {
  return ctx.principal.admin || (ctx.principal.owner !== null && owner === ctx.principal.owner);
}

/** The owner recorded on what this caller creates. */
export function ownerFor(ctx: RequestContext): string | null {
  return ctx.principal.createAs;
}
