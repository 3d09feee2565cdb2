/**
 * E2B's control plane (its public OpenAPI spec, spec/openapi.yml in e2b-dev/E2B) as the `e2b` SDK 2.x
 * calls it under /e2b. Field names are E2B's; every rule that Capsule already has (metadata keys,
 * environment variables, volume names, egress rules) is the native schema's, reused here.
 */
import { z } from 'zod';
import { EnvVars, Metadata } from '../common.js';
import { EgressRule } from '../network.js';
import { VolumeName } from '../volumes.js';
import { SandboxPath } from '../common.js';
import { CreateSnapshotRequest } from '../snapshots.js';
import { SandboxLogLevel } from '../logs.js';

/** Seconds, as E2B counts a sandbox's lifetime. */
const Seconds = z.number().int().min(0).max(365 * 24 * 3600);

export const E2bNetwork = z
  .object({
    allowPublicTraffic: z
      .boolean()
      .optional()
      .describe("true (the default): every port's URL is public (publicPorts: 'all'); false: each needs the trafficAccessToken in the E2B-Traffic-Access-Token header"),
    allowOut: z.array(EgressRule).max(256).optional().describe('Destinations allowed out: domains, *.domains, addresses, CIDRs'),
    denyOut: z.array(EgressRule).max(256).optional().describe('Destinations refused; 0.0.0.0/0 refuses everything allowOut does not name'),
  })
  .passthrough()
  .describe("E2B's network settings, mapped onto an egress policy");

export const NewSandbox = z
  .object({
    templateID: z.string().min(1).max(128).describe('E2B template: base, code-interpreter-v1, or the name of a Capsule template'),
    timeout: Seconds.optional().describe('Lifetime in seconds; default 300'),
    autoPause: z.boolean().optional().describe('Pause instead of killing at the timeout'),
    autoPauseMemory: z.boolean().optional().describe('false: at the timeout keep the files only (Capsule stops the sandbox)'),
    autoResume: z.object({ enabled: z.boolean() }).passthrough().optional().describe('Calls to a paused sandbox resume it'),
    secure: z.boolean().optional().describe('Ignored: every sandbox gets an access token'),
    allow_internet_access: z.boolean().optional().describe('false: no egress; true (the default): any public address'),
    network: E2bNetwork.optional(),
    metadata: Metadata.optional(),
    envVars: EnvVars.optional(),
    mcp: z.unknown().optional().describe('Not supported'),
    volumeMounts: z.array(z.object({ name: VolumeName, path: SandboxPath }).passthrough()).max(16).optional(),
  })
  .passthrough();
export type NewSandbox = z.infer<typeof NewSandbox>;

/** PUT /sandboxes/:id/network: the same lists, flat, and the internet switch. */
export const NetworkUpdate = E2bNetwork.extend({ allow_internet_access: z.boolean().optional() });

export const ConnectSandbox = z.object({ timeout: Seconds.optional(), memory: z.boolean().optional() }).passthrough();
export const ResumeSandbox = z.object({ timeout: Seconds.optional(), autoPause: z.boolean().optional() }).passthrough();
export const TimeoutRequest = z.object({ timeout: Seconds }).passthrough();
export const RefreshRequest = z.object({ duration: Seconds.max(3600).optional() }).passthrough();
export const PauseRequest = z.object({ memory: z.boolean().optional() }).passthrough();
/** POST /sandboxes/:id/fork (E2B's SandboxForkRequest): the forks' lifetime in seconds and how many. */
export const ForkRequest = z
  .object({
    timeout: Seconds.optional().describe("The forks' time to live in seconds (default 15, as E2B's)"),
    count: z.number().int().min(1).max(100).optional().describe('How many forks (default 1)'),
  })
  .passthrough();

/** GET /sandboxes/:id/logs (deprecated in E2B): from a time on, oldest first. */
export const LogsQuery = z
  .object({
    start: z.coerce.number().int().min(0).optional().describe('Only entries at or after this time (ms since the epoch)'),
    limit: z.coerce.number().int().min(0).max(1000).optional().describe('Most entries; default 1000'),
  })
  .passthrough();

/** GET /v2/sandboxes/:id/logs. */
export const LogsV2Query = z
  .object({
    cursor: z.coerce.number().int().min(0).optional().describe('A time (ms since the epoch): entries from it on (forward) or up to it (backward)'),
    limit: z.coerce.number().int().min(0).max(1000).optional().describe('Most entries; default 1000'),
    direction: z.enum(['forward', 'backward']).optional().describe('forward (default): oldest first; backward: newest first'),
    level: SandboxLogLevel.optional().describe('This level and above'),
    search: z.string().max(256).optional().describe('Entries whose message contains this (case-sensitive)'),
  })
  .passthrough();

export const E2bState = z.enum(['running', 'paused']);
export type E2bState = z.infer<typeof E2bState>;

export const ListQuery = z.object({
  metadata: z.string().max(16 * 1024).optional().describe('URL-encoded key=value pairs, e.g. "user=abc&app=prod"'),
  state: z
    .string()
    .optional()
    .transform((s, c) => {
      if (s === undefined || s === '') return undefined;
      const states = s.split(',').map((x) => x.trim());
      for (const x of states) if (!E2bState.safeParse(x).success) c.addIssue({ code: 'custom', message: `unknown state ${x}: running or paused` });
      return states as E2bState[];
    }),
  order: z.enum(['asc', 'desc']).optional(),
  startedAfter: z.string().datetime({ offset: true }).optional(),
  template: z.string().max(128).optional(),
  limit: z.coerce.number().int().min(1).max(100).optional(),
  nextToken: z.string().max(256).optional(),
});

export const MetricsQuery = z.object({ start: z.coerce.number().int().min(0).optional(), end: z.coerce.number().int().min(0).optional() });

export const SandboxIdParams = z.object({ sandboxID: z.string().min(1).max(64) });

/** The answer to create, connect and resume. */
export const E2bSandbox = z.object({
  templateID: z.string(),
  sandboxID: z.string(),
  alias: z.string().optional(),
  clientID: z.string(),
  envdVersion: z.string(),
  envdAccessToken: z.string().optional(),
  trafficAccessToken: z.string().nullable().optional(),
  domain: z.string().nullable().optional(),
});
export type E2bSandbox = z.infer<typeof E2bSandbox>;

export const ListedSandbox = z.object({
  templateID: z.string(),
  alias: z.string().optional(),
  sandboxID: z.string(),
  clientID: z.string(),
  startedAt: z.string(),
  endAt: z.string(),
  cpuCount: z.number().int(),
  memoryMB: z.number().int(),
  diskSizeMB: z.number().int(),
  metadata: z.record(z.string(), z.string()),
  state: E2bState,
  envdVersion: z.string(),
  volumeMounts: z.array(z.object({ name: z.string(), path: z.string() })),
});
export type ListedSandbox = z.infer<typeof ListedSandbox>;

export const SandboxDetail = ListedSandbox.extend({
  envdAccessToken: z.string().optional(),
  allowInternetAccess: z.boolean().optional(),
  network: z
    .object({ allowPublicTraffic: z.boolean(), allowOut: z.array(z.string()).optional(), denyOut: z.array(z.string()).optional() })
    .optional(),
  domain: z.string().nullable().optional(),
  lifecycle: z.object({ autoResume: z.boolean(), onTimeout: z.enum(['kill', 'pause']) }),
});
export type SandboxDetail = z.infer<typeof SandboxDetail>;

export const E2bMetric = z.object({
  timestamp: z.string(),
  timestampUnix: z.number().int(),
  cpuCount: z.number(),
  cpuUsedPct: z.number(),
  memUsed: z.number().int(),
  memTotal: z.number().int(),
  memCache: z.number().int(),
  diskUsed: z.number().int(),
  diskTotal: z.number().int(),
});

/** E2B's error body: the HTTP status again, and a message. */
export const E2bError = z.object({ code: z.number().int(), message: z.string() });
export type E2bError = z.infer<typeof E2bError>;

// --- snapshots: Capsule's filesystem snapshots (src/schemas/snapshots.ts) in E2B's words ---------

/** POST /sandboxes/:id/snapshots (E2B's SandboxSnapshotRequest): the name is Capsule's snapshot name. */
export const SnapshotRequest = CreateSnapshotRequest.pick({ name: true }).passthrough();

/** GET /snapshots as the SDK's SnapshotPaginator sends it. */
export const SnapshotListQuery = z.object({
  sandboxID: z.string().min(1).max(64).optional().describe('Only snapshots taken of this sandbox'),
  name: z.string().min(1).max(128).optional().describe('Only the snapshot with this id or name'),
  limit: z.coerce.number().int().min(1).max(100).optional(),
  nextToken: z.string().max(256).optional(),
});

/** DELETE /templates/:templateID, which the SDK's Sandbox.deleteSnapshot calls with a snapshot id. */
export const TemplateIdParams = z.object({ templateID: z.string().min(1).max(128) });

/** E2B's SnapshotInfo: what Sandbox.create() takes (snapshotID) and the snapshot's names. */
export const SnapshotInfo = z.object({
  snapshotID: z.string().describe("The Capsule snapshot id (snap-…): Sandbox.create() takes it, or the snapshot's name"),
  names: z.array(z.string()).describe('Its name, when it has one'),
});
export type SnapshotInfo = z.infer<typeof SnapshotInfo>;
