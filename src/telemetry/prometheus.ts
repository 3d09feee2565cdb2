/**
 * The daemon's Prometheus metrics (text at GET /metrics), on a registry of
 * its own (no process-wide default registry: several daemons may share a
 * process in tests). Counters and histograms are fed by the services through
 * the Telemetry interface; gauges (sandboxes by state, pools) are read from
 * the services when scraped, so they are never stale.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { PoolStats } from '../sandboxes/pool.js';
import type { Telemetry } from '../sandboxes/telemetry.js';

export interface ScrapeSources {
  /** Sandboxes per state (every state, live and ended, the store has rows for). */
  sandboxesByState(): Record<string, number>;
  pools(): PoolStats[];
}

/** Seconds: a create from a pool takes milliseconds, a cold one tens, a first debian build a minute. */
const CREATE_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
/** Seconds: an exec round trip is about a millisecond; commands run as long as they run. */
const EXEC_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 120];

export class PrometheusTelemetry implements Telemetry {
  readonly registry = new Registry();
  private readonly creates: Counter<'template' | 'outcome' | 'pooled'>;
  private readonly createSeconds: Histogram<'pooled'>;
  private readonly execSeconds: Histogram<'mode'>;
  private readonly builds: Counter<'template' | 'outcome'>;
  private readonly errors: Counter<'code'>;

  constructor(sources: ScrapeSources) {
    const registers = [this.registry];
    this.creates = new Counter({
      name: 'capsule_sandbox_creates_total',
      help: 'Sandbox creates answered, by template, outcome (ok, error) and whether a warm pool served them',
      labelNames: ['template', 'outcome', 'pooled'],
      registers,
    });
    this.createSeconds = new Histogram({
      name: 'capsule_sandbox_create_seconds',
      help: 'Time to answer a successful sandbox create',
      labelNames: ['pooled'],
      buckets: CREATE_BUCKETS,
      registers,
    });
    this.execSeconds = new Histogram({
      name: 'capsule_exec_seconds',
      help: 'Commands: time to the result (foreground) or to the pid (background)',
      labelNames: ['mode'],
      buckets: EXEC_BUCKETS,
      registers,
    });
    this.builds = new Counter({ name: 'capsule_template_builds_total', help: 'Template builds finished, by template and outcome', labelNames: ['template', 'outcome'], registers });
    this.errors = new Counter({ name: 'capsule_api_errors_total', help: 'API calls answered with an error, by error code', labelNames: ['code'], registers });
    new Gauge({
      name: 'capsule_sandboxes',
      help: 'Sandboxes by state',
      labelNames: ['state'],
      registers,
      collect() {
        this.reset();
        for (const [state, n] of Object.entries(sources.sandboxesByState())) this.set({ state }, n);
      },
    });
    new Gauge({
      name: 'capsule_pool_size',
      help: 'Warm pool target size per template and isolation',
      labelNames: ['template', 'isolation'],
      registers,
      collect() {
        this.reset();
        for (const p of sources.pools()) this.set({ template: p.template, isolation: p.isolation }, p.size);
      },
    });
    new Gauge({
      name: 'capsule_pool_ready',
      help: 'Started, unclaimed sandboxes in the warm pool per template and isolation',
      labelNames: ['template', 'isolation'],
      registers,
      collect() {
        this.reset();
        for (const p of sources.pools()) this.set({ template: p.template, isolation: p.isolation }, p.ready);
      },
    });
  }

  sandboxCreated(template: string, seconds: number, outcome: 'ok' | 'error', pooled: boolean): void {
    this.creates.inc({ template, outcome, pooled: String(pooled) });
    if (outcome === 'ok') this.createSeconds.observe({ pooled: String(pooled) }, seconds);
  }

  commandRan(seconds: number, mode: 'foreground' | 'background'): void {
    this.execSeconds.observe({ mode }, seconds);
  }

  templateBuilt(template: string, outcome: 'ok' | 'error'): void {
    this.builds.inc({ template, outcome });
  }

  apiError(code: string): void {
    this.errors.inc({ code });
  }

  /** The exposition text and its content type. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
