/**
 * Per-sandbox metrics: every `intervalMs` the daemon samples each running
 * sandbox's cgroups and disk through the runtime driver (`stats`) and keeps
 * the last `history` samples for as long as the sandbox lives. CPU is the
 * share of one core used between two samples. A sandbox that ends is
 * forgotten at the next sample; nothing here grows with time.
 */
import type { RequestContext } from '../auth/context.js';
import { UnsupportedError } from '../errors/index.js';
import type { RuntimeDriver, SandboxStats } from '../runtime/types.js';
import type { SandboxMetric } from '../schemas/metrics.js';
import type { SandboxManager } from './manager.js';
import type { SandboxStore } from './store.js';

interface Series {
  samples: SandboxMetric[];
  /** The previous raw CPU counter and when it was read, for the next sample's rate. */
  lastCpuNs: number;
  lastAt: number;
}

export class MetricsService {
  private readonly series = new Map<string, Series>();
  private timer: NodeJS.Timeout | undefined;
  private sampling: Promise<void> | undefined;

  constructor(
    private readonly sandboxes: SandboxManager,
    private readonly store: SandboxStore,
    private readonly runtime: RuntimeDriver,
    readonly intervalMs: number,
    private readonly history: number,
    private readonly onError: (err: unknown, id: string) => void = () => undefined,
  ) {}

  start(): void {
    if (this.timer || !this.runtime.stats) return;
    this.timer = setInterval(() => void this.sample(), this.intervalMs);
    this.timer.unref();
    void this.sample();
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.sampling;
  }

  /** The samples of a sandbox this caller may see, oldest first, within [start, end] when given. */
  get(ctx: RequestContext, id: string, range: { start?: Date | undefined; end?: Date | undefined } = {}): { intervalMs: number; metrics: SandboxMetric[] } {
    this.sandboxes.get(ctx, id);
    if (!this.runtime.stats) throw new UnsupportedError(`the ${this.runtime.kind} backend does not report sandbox metrics`, { backend: this.runtime.kind });
    const from = range.start?.getTime() ?? -Infinity;
    const to = range.end?.getTime() ?? Infinity;
    const all = this.series.get(id)?.samples ?? [];
    return {
      intervalMs: this.intervalMs,
      metrics: all.filter((m) => {
        const t = Date.parse(m.timestamp);
        return t >= from && t <= to;
      }),
    };
  }

  /** One round over the running sandboxes; a round still going when the next is due is not doubled. */
  sample(): Promise<void> {
    this.sampling ??= this.round().finally(() => {
      this.sampling = undefined;
    });
    return this.sampling;
  }

  private async round(): Promise<void> {
    const stats = this.runtime.stats?.bind(this.runtime);
    if (!stats) return;
    const running = new Set(this.store.listByStates(['running']).map((r) => r.id));
    for (const id of this.series.keys()) if (!running.has(id)) this.series.delete(id);
    for (const id of running) {
      let s: SandboxStats;
      try {
        s = await stats(id);
      } catch (err) {
        this.onError(err, id);
        continue;
      }
      const now = Date.now();
      // Ended while we were reading: it is not kept.
      if (this.store.get(id)?.state !== 'running') continue;
      let series = this.series.get(id);
      const first = !series;
      series ??= { samples: [], lastCpuNs: s.cpuUsageNs, lastAt: now };
      const dt = now - series.lastAt;
      // Percent of one core: ns of CPU per ms of wall clock, /1e6 × 100.
      const cpuUsedPct = !first && dt > 0 ? Math.max(0, ((s.cpuUsageNs - series.lastCpuNs) / (dt * 1e6)) * 100) : 0;
      series.lastCpuNs = s.cpuUsageNs;
      series.lastAt = now;
      series.samples.push({
        timestamp: new Date(now).toISOString(),
        cpuUsedPct: Math.round(cpuUsedPct * 10) / 10,
        cpuLimitPct: Math.round(s.cpuLimitCores * 1000) / 10,
        cpuCount: s.cpuLimitCores,
        memUsedBytes: s.memoryBytes,
        memLimitBytes: s.memoryLimitBytes,
        memPeakBytes: s.memoryPeakBytes,
        diskUsedBytes: s.diskUsedBytes,
        diskQuotaBytes: s.diskTotalBytes,
        pids: s.pids,
        pidsLimit: s.pidsLimit,
      });
      if (series.samples.length > this.history) series.samples.splice(0, series.samples.length - this.history);
      this.series.set(id, series);
    }
  }
}
