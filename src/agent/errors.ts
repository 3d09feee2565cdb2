/** Maps the agent's errno names onto the product's error classes. */
import {
  CapsuleError,
  ConflictError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  SandboxError,
} from '../errors/index.js';

export function agentError(errno: string, message: string, path?: string): CapsuleError {
  const details: Record<string, unknown> = { errno };
  if (path !== undefined) details.path = path;
  switch (errno) {
    case 'ENOENT':
    case 'ESRCH':
      return new NotFoundError(message, details);
    case 'EEXIST':
    case 'ENOTEMPTY':
      return new ConflictError(message, details);
    case 'EINVAL':
    case 'EISDIR':
    case 'ENOTDIR':
    case 'ENAMETOOLONG':
    case 'ELOOP':
      return new InvalidArgumentError(message, details);
    case 'EACCES':
    case 'EPERM':
      return new PermissionDeniedError(message, details);
    default:
      return new SandboxError(message, details);
  }
}
