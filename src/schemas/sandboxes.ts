import { z } from 'zod';
import { EnvVars, Metadata, SandboxId, SandboxTimeoutMs, TemplateName, Timestamp } from './common.js';

import { SANDBOX_STATES } from '../sandboxes/lifecycle.js';
import { ISOLATIONS } from '../runtime/isolation.js';
import { ON_TIMEOUT } from '../sandboxes/policy.js';
import { VolumeMountRequest, VolumeName } from './volumes.js';
import { NetworkConfig } from './network.js';
import { Snapshot, SnapshotRef } from './snapshots.js';

export { SANDBOX_STATES };
export const SandboxState = z
  .enum(SANDBOX_STATES)
  .describe(
    'Lifecycle state (docs/adr/0005-state-machine-and-runtime-boundary.md): creating, running, paused, stopped, their transitional states (pausing, resuming, stopping, starting), or a final one: killed, expired, failed',
  );

export const Isolation = z
  .enum(ISOLATIONS)
  .describe(
    "How the sandbox is kept apart from the host's kernel. container: Linux namespaces, cgroups and a seccomp filter; its processes make system calls to the host kernel (fastest). gvisor: gVisor's user-space kernel answers every system call, so the host kernel sees only gVisor's (slower system calls, ~10 MiB more memory; no pause, stop/start, volumes or egress: each answers 422 unsupported). microvm: a virtual machine (not available yet). GET /v1/info lists which this host has, with each one's capabilities",
  );

/** Longest span a lifecycle clock may be set to: a year (keeps expiry times valid dates). */
const MAX_LIFECYCLE_MS = 365 * 24 * 60 * 60_000;

export const OnTimeout = z
  .enum(ON_TIMEOUT)
  .describe(
    'What the timeout (or idleMs without API activity) does to a running sandbox: kill it (default), pause it (frozen, memory kept), stop it (processes end, files kept) or hibernate it (processes and memory to disk, memory freed; needs capabilities.memorySnapshot)',
  );

export const Lifecycle = z
  .object({
    onTimeout: OnTimeout.optional(),
    autoResume: z
      .boolean()
      .optional()
      .describe('A command or file call to a paused or stopped sandbox resumes or starts it first, then answers; without it such a call answers 409. Default false'),
    idleMs: z
      .number()
      .int()
      .min(1000)
      .max(MAX_LIFECYCLE_MS)
      .optional()
      .describe('Apply onTimeout after this many ms without API activity (commands, files; a running foreground command or stream counts as activity). Default: only the timeout counts'),
    deleteAfterMs: z
      .number()
      .int()
      .min(1000)
      .max(MAX_LIFECYCLE_MS)
      .optional()
      .describe("Delete a paused or stopped sandbox this many ms after it was paused or stopped (retention). Default: the daemon's CAPSULE_DEFAULT_DELETE_AFTER_MS, 7 days"),
  })
  .strict()
  .describe('What happens when the sandbox times out or sits idle, whether calls wake it, and how long it is kept paused or stopped');
export type Lifecycle = z.infer<typeof Lifecycle>;

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
    template: TemplateName.optional().describe('Template to start from (see GET /v1/templates); default debian. Not with snapshot'),
    snapshot: SnapshotRef.optional().describe(
      "A filesystem snapshot to start from (see /v1/snapshots): the template it was taken on, its files and its env, workdir and user. Not with template",
    ),
    timeoutMs: SandboxTimeoutMs.optional().describe('Lifetime in ms before the sandbox is killed; default 5 minutes, extendable'),
    envs: EnvVars.optional().describe('Environment variables every command in this sandbox gets'),
    metadata: Metadata.optional(),
    resources: Resources.optional(),
    isolation: Isolation.optional().describe(
      "How the sandbox is kept apart from the host's kernel: container or gvisor (microvm is not available yet); default: the daemon's (CAPSULE_ISOLATION, container unless set). An isolation this host lacks answers 422 unsupported with the reason",
    ),
    lifecycle: Lifecycle.optional(),
    volumes: z
      .array(VolumeMountRequest)
      .max(16)
      .refine((v) => new Set(v.map((m) => m.path)).size === v.length, 'two volumes cannot share a path')
      .optional()
      .describe('Named volumes to attach (see /v1/volumes); they stay attached across stop and start'),
    network: NetworkConfig.optional(),
  })
  .strict();
export type CreateSandboxRequest = z.infer<typeof CreateSandboxRequest>;

export const Sandbox = z.object({
  id: SandboxId,
  template: z.string(),
  state: SandboxState,
  createdAt: Timestamp,
  expiresAt: Timestamp.describe(
    'Running: when its timeout passes (then lifecycle.onTimeout applies: kill by default) unless extended. Paused or stopped: when retention deletes it (lifecycle.deleteAfterMs) unless resumed or started first',
  ),
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
  lifecycle: z
    .object({
      onTimeout: OnTimeout,
      autoResume: z.boolean().describe('Whether command and file calls wake it when paused or stopped'),
      idleMs: z.number().optional().describe('Idle time after which onTimeout applies (absent: only the timeout)'),
      deleteAfterMs: z.number().describe('How long it is kept paused or stopped before it is deleted'),
    })
    .describe('Its lifecycle policy, with the defaults filled in'),
  volumes: z
    .array(z.object({ name: VolumeName, path: z.string().describe('Where it appears inside the sandbox'), readOnly: z.boolean() }))
    .optional()
    .describe('Attached volumes (absent when none)'),
  snapshot: z.string().optional().describe('The snapshot it was started from (its id), if any'),
  timeoutRemainingMs: z
    .number()
    .optional()
    .describe('Paused or stopped: the lifetime left when its clock stopped; it gets this back when resumed or started (its whole timeout when none was left)'),
});
export type Sandbox = z.infer<typeof Sandbox>;

export const ListSandboxesQuery = z
  .object({
    state: z.union([SandboxState, z.literal('all')]).optional().describe('Only sandboxes in this state; default: every live one (not killed, expired or failed)'),
  })
  .catchall(z.string().max(1024))
  .describe('Filter by metadata with metadata.<key>=<value> query parameters');

export const ListSandboxesResponse = z.object({ sandboxes: z.array(Sandbox) });

export const SetTimeoutRequest = z
  .object({ timeoutMs: SandboxTimeoutMs.describe('New lifetime from now, in ms') })
  .strict();

export const WakeSandboxRequest = z
  .object({
    timeoutMs: SandboxTimeoutMs.optional().describe(
      'Lifetime from now once it runs again; default: what it had left when it was paused or stopped (its whole timeout when nothing was left)',
    ),
  })
  .strict()
  .describe('Resume or start: an empty body is fine');
export type WakeSandboxRequest = z.infer<typeof WakeSandboxRequest>;

export const PauseSandboxRequest = z
  .object({
    memory: z
      .enum(['keep', 'disk'])
      .optional()
      .describe(
        "keep (default): freeze every process, memory stays resident. disk: hibernate: every process and its memory are written to disk (CRIU) and the sandbox's memory is freed; resume restores them, also after a daemon restart. Needs capabilities.memorySnapshot (GET /v1/info)",
      ),
  })
  .strict()
  .describe('Pause: an empty body is fine');
export type PauseSandboxRequest = z.infer<typeof PauseSandboxRequest>;

export const ForkSandboxRequest = z
  .object({
    count: z.number().int().min(1).max(16).optional().describe('How many forks; default 1'),
    memory: z
      .boolean()
      .optional()
      .describe(
        'true: every fork continues from the same instant with the source\'s processes and memory (CRIU; needs capabilities.memorySnapshot), each with its own id, hostname and files. false (default): forks of its files only (a snapshot and a create from it)',
      ),
  })
  .strict()
  .describe('Fork a running sandbox: an empty body makes one filesystem fork');
export type ForkSandboxRequest = z.infer<typeof ForkSandboxRequest>;

export const SandboxParams = z.object({ id: SandboxId });

export const ForkSandboxResponse = z.object({
  snapshot: Snapshot.describe('The filesystem snapshot the forks start from (metadata forkOf: the source); kept until deleted'),
  sandboxes: z.array(Sandbox).describe('The forks, running'),
});
export type ForkSandboxResponse = z.infer<typeof ForkSandboxResponse>;
