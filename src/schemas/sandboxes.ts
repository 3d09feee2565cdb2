import { z } from 'zod';
import { EnvVars, Metadata, SandboxId, SandboxTimeoutMs, TemplateName, Timestamp } from './common.js';

import { SANDBOX_STATES } from '../sandboxes/lifecycle.js';
import { ISOLATIONS } from '../runtime/isolation.js';

export { SANDBOX_STATES };
export const SandboxState = z
  .enum(SANDBOX_STATES)
  .describe(
    'Lifecycle state (docs/adr/0005-state-machine-and-runtime-boundary.md): creating, running, the pause/stop/snapshot states, or a final one: killed, expired, failed',
  );

export const Isolation = z
  .enum(ISOLATIONS)
  .describe(
    "How the sandbox is kept apart from the host's kernel. container: Linux namespaces, cgroups and a seccomp filter; its processes make system calls to the host kernel (fastest). gvisor: gVisor's user-space kernel answers every system call, so the host kernel sees only gVisor's (slower system calls, ~10 MiB more memory, no pause). microvm: a virtual machine (not available yet). GET /v1/info lists which this host has",
  );

export const Resources = z
  .object({
    cpus: z.number().min(0.05).max(64).optional().describe('CPU limit in cores (fractions allowed)'),
    memoryMb: z.number().int().min(16).max(1024 * 1024).optional().describe('Memory limit in MiB; the sandbox is OOM-killed inside its own cgroup above it'),
    pids: z.number().int().min(8).max(65536).optional().describe('Maximum number of processes and threads'),
    diskMb: z
      .number()
      .int()
      .min(16)
      .max(1024 * 1024)
      .optional()
      .describe("Disk quota in MiB for everything the sandbox writes (its own filesystem); writes past it fail with ENOSPC. Default 2048; the daemon's limit (CAPSULE_MAX_DISK_MB, default 65536) may be below the schema's maximum"),
  })
  .strict()
  .describe('Limits of the sandbox; each one not given takes the daemon default (1 CPU, 512 MiB, 256 pids, 2048 MiB of disk)');

export const CreateSandboxRequest = z
  .object({
    template: TemplateName.default('debian'),
    timeoutMs: SandboxTimeoutMs.optional().describe('Lifetime in ms before the sandbox is killed; default 5 minutes, extendable'),
    envs: EnvVars.optional().describe('Environment variables every command in this sandbox gets'),
    metadata: Metadata.optional(),
    resources: Resources.optional(),
    isolation: Isolation.optional().describe(
      "How the sandbox is kept apart from the host's kernel: container or gvisor (microvm is not available yet); default: the daemon's (CAPSULE_ISOLATION, container unless set). An isolation this host lacks answers 422 unsupported with the reason",
    ),
  })
  .strict();
export type CreateSandboxRequest = z.infer<typeof CreateSandboxRequest>;

export const Sandbox = z.object({
  id: SandboxId,
  template: z.string(),
  state: SandboxState,
  createdAt: Timestamp,
  expiresAt: Timestamp.describe('When the sandbox will be killed unless its timeout is extended'),
  metadata: z.record(z.string(), z.string()),
  resources: z.object({
    cpus: z.number(),
    memoryMb: z.number(),
    pids: z.number(),
    diskMb: z.number().optional().describe('Disk quota in MiB (absent for sandboxes made before disk quotas existed)'),
  }),
  endedAt: Timestamp.optional(),
  endReason: z.string().optional().describe('Why a sandbox ended: killed, expired, or an error'),
  isolation: Isolation.describe('How this sandbox is kept apart from the host kernel (container or gvisor)'),
});
export type Sandbox = z.infer<typeof Sandbox>;

export const ListSandboxesQuery = z
  .object({
    state: z.union([SandboxState, z.literal('all')]).optional().describe('Only sandboxes in this state; default: creating and running'),
  })
  .catchall(z.string().max(1024))
  .describe('Filter by metadata with metadata.<key>=<value> query parameters');

export const ListSandboxesResponse = z.object({ sandboxes: z.array(Sandbox) });

export const SetTimeoutRequest = z
  .object({ timeoutMs: SandboxTimeoutMs.describe('New lifetime from now, in ms') })
  .strict();

export const SandboxParams = z.object({ id: SandboxId });
