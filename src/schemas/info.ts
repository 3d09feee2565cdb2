import { z } from 'zod';
import { Isolation } from './sandboxes.js';

export const PoolInfo = z.object({
  template: z.string().describe('Template whose sandboxes this pool keeps started'),
  isolation: Isolation.describe("Isolation of the pool's sandboxes: a create claims only from the pool of its own template and isolation"),
  size: z.number().int().describe('Configured size (`capsule serve --pool <template>[:<isolation>]=<size>`, env CAPSULE_POOL)'),
  ready: z.number().int().describe('Started sandboxes waiting to be claimed by a create'),
  starting: z.boolean().describe('A pooled sandbox is being started now (refills run one at a time, never during a user create)'),
  claims: z.number().int().describe('Creates served from the pool since the daemon started'),
  misses: z.number().int().describe('Creates that found the pool empty, or asked for limits a started sandbox cannot take, and were started cold'),
  fallbacks: z.number().int().describe('Claims that failed (the pooled sandbox had died or could not be resized) and were started cold instead'),
  lost: z.number().int().describe('Pooled sandboxes that died while waiting and were replaced'),
  started: z.number().int().describe('Sandboxes the pool has started'),
  startFailures: z.number().int().describe('Pool starts that failed; the pool retries with a growing delay (at most 60 s)'),
  lastError: z.string().optional().describe('Why the last pool start failed'),
});

export const RuntimeCapabilities = z
  .object({
    isolation: z.enum(['container', 'gvisor', 'microvm']).describe('How sandboxes are separated from the host kernel'),
    pause: z.boolean().describe('Can freeze and thaw a sandbox'),
    volumes: z.boolean().describe("Can attach named volumes (persistent quota'd disks) to sandboxes"),
    stop: z.boolean().describe('Can stop a sandbox keeping its files, and start it again (also after a daemon or host restart)'),
    snapshot: z.boolean().describe("Can take filesystem snapshots: a consistent copy of a sandbox's files that new sandboxes start from"),
    memorySnapshot: z.boolean().describe("Can dump a sandbox's processes and memory to disk and restore them (hibernate; fork with memory)"),
    updateResources: z.boolean().describe('Can change cpu, memory and pids limits of a running sandbox'),
    exportChanges: z.boolean().describe("Can copy a sandbox's file changes out as a layer (template builds, snapshots)"),
    fileHandoff: z.boolean().describe('Uploads are written by the daemon straight into the file the agent made for them, not relayed to the agent'),
    network: z.array(z.string()).describe('Network modes a sandbox can be given'),
    networkAfterCreate: z
      .boolean()
      .optional()
      .describe(
        'false where a sandbox created without a network can never be given one (a microVM has no network device ' +
          'hot-plug: ask for egress or public ports at create); absent where a policy or a port can add it later',
      ),
    maxLayers: z.number().int().describe('Most read-only filesystem layers one sandbox stacks'),
    reasons: z
      .record(z.string(), z.string())
      .optional()
      .describe('Why a capability is false, and what it would take (e.g. memorySnapshot: the daemon runs crun, hibernate needs runc with CRIU 4)'),
  })
  .describe('What a backend can do; an operation it cannot do answers 422 unsupported');

export const RuntimeInfo = z
  .object({
    kind: z.string().describe('The backend that runs sandboxes whose create names no isolation, e.g. crun'),
    name: z.string().describe('Its version, e.g. "crun 1.8.1"'),
    capabilities: RuntimeCapabilities,
  })
  .describe('The default runtime backend and what it can do');

export const BackendInfo = z
  .object({
    isolation: Isolation,
    available: z.boolean().describe('Whether a create may ask for this isolation on this host'),
    default: z.boolean().describe('Whether a create that names no isolation gets this one (CAPSULE_ISOLATION)'),
    kind: z.string().optional().describe('The backend, recorded with each of its sandboxes: crun, runc or runsc'),
    name: z.string().optional().describe('Its version, e.g. "runsc 0.0~20221219.0"'),
    capabilities: RuntimeCapabilities.optional(),
    reason: z.string().optional().describe('Why it is not available here, and how to make it so'),
  })
  .describe('One isolation kind on this daemon');

export const InfoResponse = z
  .object({
    version: z.string().describe('Daemon version'),
    runtime: RuntimeInfo,
    backends: z.array(BackendInfo).describe('Every isolation kind (container, gvisor, microvm), with its availability here and the reason when absent'),
    pools: z.array(PoolInfo).describe('Warm pools, one per template with a size above 0; empty when pools are off'),
  })
  .describe('Daemon state that is not about one sandbox');
export type InfoResponse = z.infer<typeof InfoResponse>;
