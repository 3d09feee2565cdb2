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

/*
 * One subclass per code, so callers can `catch (e) { if (e instanceof NotFoundError) ... }`
 * instead of comparing strings. Every constructor takes (message, details?, options?) so
 * errorFromWire can build any of them the same way; ERROR_CLASSES below is typed over
 * ErrorCode, so a new code without a class does not compile.
 */
type Details = Record<string, unknown>;
type Options = { cause?: unknown };

export class InvalidArgumentError extends CapsuleError {
  constructor(message: string, details?: Details, options?: Options) {
    super('invalid_argument', message, details, options);
    this.name = 'InvalidArgumentError';
  }
}
export class UnauthenticatedError extends CapsuleError {
  constructor(message = 'missing or invalid API key: pass Authorization: Bearer <key>', details?: Details, options?: Options) {
    super('unauthenticated', message, details, options);
    this.name = 'UnauthenticatedError';
  }
}
/** The caller is known but may not do this (not an admin, not the owner, or the sandbox's own file permissions). */
export class PermissionDeniedError extends CapsuleError {
  constructor(message: string, details?: Details, options?: Options) {
    super('permission_denied', message, details, options);
    this.name = 'PermissionDeniedError';
  }
}
export class NotFoundError extends CapsuleError {
  constructor(message: string, details?: Details, options?: Options) {
    super('not_found', message, details, options);
    this.name = 'NotFoundError';
  }
}
export class ConflictError extends CapsuleError {
  constructor(message: string, details?: Details, options?: Options) {
    super('conflict', message, details, options);
    this.name = 'ConflictError';
  }
}
export class PayloadTooLargeError extends CapsuleError {
  constructor(message: string, details?: Details, options?: Options) {
    super('payload_too_large', message, details, options);
    this.name = 'PayloadTooLargeError';
  }
}
/** A quota or a request rate was exceeded (HTTP 429); waiting or freeing something helps, retrying at once does not. */
export class RateLimitedError extends CapsuleError {
  constructor(message: string, details?: Details, options?: Options) {
    super('rate_limited', message, details, options);
    this.name = 'RateLimitedError';
  }
}
export class TimeoutError extends CapsuleError {
  constructor(message: string, details?: Details, options?: Options) {
    super('timeout', message, details, options);
    this.name = 'TimeoutError';
  }
}
/** Something inside the sandbox failed (bad path, file is a FIFO, agent gone). */
export class SandboxError extends CapsuleError {
  constructor(message: string, details?: Details, options?: Options) {
    super('sandbox_error', message, details, options);
    this.name = 'SandboxError';
  }
}
/** The OCI runtime or the host failed; the message says how to fix it where we know. */
export class RuntimeError extends CapsuleError {
  constructor(message: string, details?: Details, options?: Options) {
    super('runtime_error', message, details, options);
    this.name = 'RuntimeError';
  }
}
/** The sandbox's backend or agent lacks what the operation needs (see the runtime's capabilities). */
export class UnsupportedError extends CapsuleError {
  constructor(message: string, details?: Details, options?: Options) {
    super('unsupported', message, details, options);
    this.name = 'UnsupportedError';
  }
}
export class UnavailableError extends CapsuleError {
  constructor(message: string, details?: Details, options?: Options) {
    super('unavailable', message, details, options);
    this.name = 'UnavailableError';
  }
}
/** A fault of Capsule itself (a bug, or an answer the SDK cannot read); the daemon logs the cause. */
export class InternalError extends CapsuleError {
  constructor(message: string, details?: Details, options?: Options) {
    super('internal', message, details, options);
    this.name = 'InternalError';
  }
}

/** The class for each code: what errorFromWire builds, and what the SDK's users can `instanceof`. */
export const ERROR_CLASSES: { readonly [C in ErrorCode]: new (message: string, details?: Details, options?: Options) => CapsuleError } = {
  invalid_argument: InvalidArgumentError,
  unauthenticated: UnauthenticatedError,
  permission_denied: PermissionDeniedError,
  not_found: NotFoundError,
  conflict: ConflictError,
  payload_too_large: PayloadTooLargeError,
  rate_limited: RateLimitedError,
  timeout: TimeoutError,
  sandbox_error: SandboxError,
  unsupported: UnsupportedError,
  runtime_error: RuntimeError,
  unavailable: UnavailableError,
  internal: InternalError,
};

export function isCapsuleError(e: unknown): e is CapsuleError {
  return e instanceof CapsuleError;
}

/**
 * Build the right subclass from a wire error (used by the SDK and the CLI). A code
 * this build does not know (a newer daemon) becomes an InternalError that keeps the
 * daemon's code in details.unknownCode, rather than being dropped.
 */
export function errorFromWire(code: string, message: string, details?: Record<string, unknown>): CapsuleError {
  if (Object.hasOwn(ERROR_CLASSES, code)) return new ERROR_CLASSES[code as ErrorCode](message, details);
  return new InternalError(message, { ...details, unknownCode: code });
}
