/** Maps the agent's errno names onto the product's error classes. */
import {
  CapsuleError,
  ConflictError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  SandboxError,
  UnsupportedError,
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
    case 'E2BIG': // more than fits: arguments, or file attributes over the file system's room
      return new InvalidArgumentError(message, details);
    case 'ENOTSUP': // e.g. a file system without user extended attributes
      return new UnsupportedError(message, details);
    case 'EACCES':
    case 'EPERM':
      return new PermissionDeniedError(message, details);
    default:
      return new SandboxError(message, details);
  }
}

/** Who the agent is, for messages: "the agent in sandbox sbx_1 (capsule-agent/0.1.0, protocol 1.0)". */
export interface AgentIdentity {
  sandboxId?: string | undefined;
  agentVersion: string;
  protocol: string;
}

function who(a: AgentIdentity): string {
  const where = a.sandboxId ? `the agent in sandbox ${a.sandboxId}` : 'the agent';
  return `${where} (${a.agentVersion || 'unknown version'}, protocol ${a.protocol})`;
}

/**
 * A request needs a protocol feature the sandbox's agent lacks. Raised before
 * anything is sent. A sandbox keeps the agent binary it was created with, so
 * only a new sandbox gets the daemon's current agent.
 */
export class AgentFeatureError extends SandboxError {
  constructor(agent: AgentIdentity, feature: string) {
    super(`${who(agent)} does not support ${feature}; a sandbox keeps the agent it was created with: create a new sandbox to get this daemon's agent`, {
      feature,
      agentVersion: agent.agentVersion,
      protocol: agent.protocol,
      ...(agent.sandboxId ? { sandboxId: agent.sandboxId } : {}),
    });
    this.name = 'AgentFeatureError';
  }
}

/** The agent speaks another major protocol version: this daemon cannot talk to it at all. */
export class AgentVersionError extends SandboxError {
  constructor(agent: AgentIdentity, daemonProtocol: string, daemonMajor: number) {
    super(
      `${who(agent)} is not compatible with this daemon (protocol ${daemonProtocol}), which serves agents of protocol ${daemonMajor}.x only: ` +
        `use a daemon of the agent's version for this sandbox, or kill it and create a new one`,
      {
        agentVersion: agent.agentVersion,
        protocol: agent.protocol,
        daemonProtocol,
        ...(agent.sandboxId ? { sandboxId: agent.sandboxId } : {}),
      },
    );
    this.name = 'AgentVersionError';
  }
}
