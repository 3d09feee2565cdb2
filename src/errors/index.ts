/**
 * One error hierarchy for the whole product. Every failure that crosses a
 * boundary (REST, MCP, CLI, SDK) is a CapsuleError with a stable `code`;
 * the edges map codes to HTTP statuses / MCP results in one place each.
 */
export const ERROR_CODES = [
  'invalid_argument',
  'unauthenticated',
  'permission_denied',
  'not_found',
  'conflict',
  'payload_too_large',
  'rate_limited',
  'timeout',
  'sandbox_error',
  'unsupported',
  'runtime_error',
  'unavailable',
  'internal',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

/** HTTP status for each code: 4xx for client mistakes, 5xx only for our own faults. */
export const HTTP_STATUS: Record<ErrorCode, number> = {
  invalid_argument: 400,
  unauthenticated: 401,
  permission_denied: 403,
  not_found: 404,
  conflict: 409,
  payload_too_large: 413,
  rate_limited: 429,
  timeout: 504,
  sandbox_error: 422,
  // Well-formed, but this sandbox's backend (or agent) cannot do it: not the daemon's fault, so not a 5xx.
  unsupported: 422,
  runtime_error: 500,
  unavailable: 503,
  internal: 500,
};

export class CapsuleError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;
  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CapsuleError';
    this.code = code;
    this.details = details;
  }
  toJSON(): { error: { code: ErrorCode; message: string; details?: Record<string, unknown> } } {
    return { error: { code: this.code, message: this.message, ...(this.details ? { details: this.details } : {}) } };
  }
}

export class InvalidArgumentError extends CapsuleError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('invalid_argument', message, details);
    this.name = 'InvalidArgumentError';
  }
}
export class UnauthenticatedError extends CapsuleError {
  constructor(message = 'missing or invalid API key: pass Authorization: Bearer <key>') {
    super('unauthenticated', message);
    this.name = 'UnauthenticatedError';
  }
}
export class PermissionDeniedError extends CapsuleError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('permission_denied', message, details);
    this.name = 'PermissionDeniedError';
  }
}
export class NotFoundError extends CapsuleError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('not_found', message, details);
    this.name = 'NotFoundError';
  }
}
export class ConflictError extends CapsuleError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('conflict', message, details);
    this.name = 'ConflictError';
  }
}
export class PayloadTooLargeError extends CapsuleError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('payload_too_large', message, details);
    this.name = 'PayloadTooLargeError';
  }
}
/** A quota or request rate of the caller's key is used up. */
export class RateLimitedError extends CapsuleError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('rate_limited', message, details);
    this.name = 'RateLimitedError';
  }
}
export class TimeoutError extends CapsuleError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('timeout', message, details);
    this.name = 'TimeoutError';
  }
}
/** Something inside the sandbox failed (bad path, file is a FIFO, agent gone). */
export class SandboxError extends CapsuleError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('sandbox_error', message, details);
    this.name = 'SandboxError';
  }
}
/** The OCI runtime or the host failed; the message says how to fix it where we know. */
export class RuntimeError extends CapsuleError {
  constructor(message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super('runtime_error', message, details, options);
    this.name = 'RuntimeError';
  }
}
/** The sandbox's backend or agent lacks what the operation needs (see the runtime's capabilities). */
export class UnsupportedError extends CapsuleError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('unsupported', message, details);
    this.name = 'UnsupportedError';
  }
}
export class UnavailableError extends CapsuleError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('unavailable', message, details);
    this.name = 'UnavailableError';
  }
}

export function isCapsuleError(e: unknown): e is CapsuleError {
  return e instanceof CapsuleError;
}

/** Build the right subclass from a wire error (used by the SDK and the CLI). */
export function errorFromWire(code: string, message: string, details?: Record<string, unknown>): CapsuleError {
  switch (code) {
    case 'invalid_argument': return new InvalidArgumentError(message, details);
    case 'unauthenticated': return new UnauthenticatedError(message);
    case 'permission_denied': return new PermissionDeniedError(message, details);
    case 'rate_limited': return new RateLimitedError(message, details);
    case 'not_found': return new NotFoundError(message, details);
    case 'conflict': return new ConflictError(message, details);
    case 'payload_too_large': return new PayloadTooLargeError(message, details);
    case 'timeout': return new TimeoutError(message, details);
    case 'sandbox_error': return new SandboxError(message, details);
    case 'unsupported': return new UnsupportedError(message, details);
    case 'runtime_error': return new RuntimeError(message, details);
    case 'unavailable': return new UnavailableError(message, details);
    default:
      return new CapsuleError((ERROR_CODES as readonly string[]).includes(code) ? (code as ErrorCode) : 'internal', message, details);
  }
}
