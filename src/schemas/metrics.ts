/** Per-sandbox resource samples, taken by the daemon from the sandbox's cgroups and disk. */
import { z } from 'zod';
import { Timestamp } from './common.js';

export const MetricsQuery = z.object({
  start: z.string().datetime({ offset: true }).optional().describe('Only samples at or after this time (ISO 8601)'),
  end: z.string().datetime({ offset: true }).optional().describe('Only samples at or before this time (ISO 8601)'),
});

export const SandboxMetric = z.object({
  timestamp: Timestamp.describe('When the sample was taken'),
  cpuUsedPct: z.number().describe('CPU used since the previous sample, in % of one core (200 = two cores busy)'),
  cpuLimitPct: z.number().describe('The CPU limit in % of one core (cpus × 100)'),
  cpuCount: z.number().describe('The CPU limit in cores'),
  memUsedBytes: z.number().int().describe('Memory charged to the sandbox now (its cgroup, page cache included)'),
  memLimitBytes: z.number().int().describe('The memory limit'),
  memPeakBytes: z.number().int().describe('Highest memory charge since the sandbox started'),
  diskUsedBytes: z.number().int().describe('Bytes used on the sandbox\'s own disk (everything it wrote)'),
  diskQuotaBytes: z.number().int().describe('Size of the sandbox\'s disk (its quota)'),
  pids: z.number().int().describe('Processes and threads in the sandbox now'),
  pidsLimit: z.number().int().describe('The pids limit'),
});
export type SandboxMetric = z.infer<typeof SandboxMetric>;

export const MetricsResponse = z.object({
  intervalMs: z.number().int().describe('How often the daemon samples'),
  metrics: z.array(SandboxMetric).describe('Oldest first; at most the daemon\'s history length (about an hour at the default interval)'),
});
export type MetricsResponse = z.infer<typeof MetricsResponse>;
