/**
 * One place where Capsule's error classes become E2B's three error shapes:
 *
 *  - the control plane's `{code: <HTTP status>, message}` (the SDK reads `code` 404, 409, 401, 429);
 *  - envd's HTTP routes, the same body, with 502 for a sandbox that is not running (what E2B's
 *    proxy answers; the SDK's isRunning() reads it) and 507 for a full disk;
 *  - Connect's codes (`not_found`, `already_exists`, `unavailable`, …) for the RPC services.
 */
import { CapsuleError, HTTP_STATUS, isCapsuleError } from '../errors/index.js';

/** A sandbox that exists but is not running (paused, stopped, ended): requireState's conflict carries its state. */
export function isNotRunning(err: CapsuleError): boolean {
  return err.code === 'conflict' && typeof err.details?.state === 'string';
}

function errno(err: CapsuleError): string | undefined {
  const e = err.details?.errno;
  return typeof e === 'string' ? e : undefined;
}

/** Status and body for the control plane; undefined for errors that are not CapsuleErrors (bugs: 500, logged by the caller). */
export function apiError(err: unknown): { status: number; body: { code: number; message: string } } | undefined {
  if (!isCapsuleError(err)) return undefined;
  const status = HTTP_STATUS[err.code];
  return { status, body: { code: status, message: err.message } };
}

/** Status and body for envd's HTTP routes (/files, /envs, /metrics). */
export function envdHttpError(err: unknown): { status: number; body: { code: number; message: string } } | undefined {
  if (!isCapsuleError(err)) return undefined;
  const status = isNotRunning(err) ? 502 : errno(err) === 'ENOSPC' ? 507 : HTTP_STATUS[err.code];
  return { status, body: { code: status, message: err.message } };
}

export const CONNECT_CODES = [
  'canceled',
  'unknown',
  'invalid_argument',
  'deadline_exceeded',
  'not_found',
  'already_exists',
  'permission_denied',
  'resource_exhausted',
  'failed_precondition',
  'aborted',
  'out_of_range',
  'unimplemented',
  'internal',
  'unavailable',
  'data_loss',
  'unauthenticated',
] as const;
export type ConnectCode = (typeof CONNECT_CODES)[number];

/** The HTTP status of a unary Connect error (Connect protocol spec). */
export const CONNECT_HTTP_STATUS: Record<ConnectCode, number> = {
  canceled: 499,
  unknown: 500,
  invalid_argument: 400,
  deadline_exceeded: 504,
  not_found: 404,
  already_exists: 409,
  permission_denied: 403,
  resource_exhausted: 429,
  failed_precondition: 400,
  aborted: 409,
  out_of_range: 400,
  unimplemented: 501,
  internal: 500,
  unavailable: 503,
  data_loss: 500,
  unauthenticated: 401,
};

/** An error raised by the adapter itself in Connect's vocabulary. */
export class ConnectError extends Error {
  constructor(
    readonly connectCode: ConnectCode,
    message: string,
  ) {
    super(message);
    this.name = 'ConnectError';
  }
}

/** Connect code and message; undefined for errors that are neither (bugs: `internal`, logged by the caller). */
export function connectError(err: unknown): { code: ConnectCode; message: string } | undefined {
  if (err instanceof ConnectError) return { code: err.connectCode, message: err.message };
  if (!isCapsuleError(err)) return undefined;
  const code = ((): ConnectCode => {
    if (isNotRunning(err)) return 'unavailable';
    if (errno(err) === 'EEXIST') return 'already_exists';
    if (errno(err) === 'ENOSPC') return 'resource_exhausted';
    switch (err.code) {
      case 'invalid_argument':
        return 'invalid_argument';
      case 'unauthenticated':
        return 'unauthenticated';
      case 'permission_denied':
        return 'permission_denied';
      case 'not_found':
        return 'not_found';
      case 'conflict':
        return 'failed_precondition';
      case 'payload_too_large':
      case 'rate_limited':
        return 'resource_exhausted';
      case 'timeout':
        return 'deadline_exceeded';
      case 'unsupported':
        return 'unimplemented';
      case 'unavailable':
        return 'unavailable';
      case 'sandbox_error':
        return 'unknown';
      default:
        return 'internal';
    }
  })();
  return { code, message: err.message };
}
