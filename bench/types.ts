/**
 * Shapes shared by the scenarios, the report and the plot.
 */
import type { Summary } from './stats.js';

export type RowKind = 'capsule' | 'baseline' | 'floor';

/** One measured series: a latency distribution (ms) or a rate. */
export interface Row {
  /** e.g. `ttfc.cold`, `crun run+exec`. */
  name: string;
  kind: RowKind;
  /** Unit of the samples: 'ms' latencies, 'MB/s' rates, 'MiB' memory. */
  unit: 'ms' | 'MB/s' | 'MiB';
  summary: Summary;
  /** Raw samples (kept for the plot and later analysis). */
  samples: number[];
  /** Operations per second over the measured wall time (sustained scenarios). */
  throughput?: number;
  /** Name of the row this one is compared to (ratio = p50 / that row's p50). */
  vs?: string;
  ratio?: number;
  /** The target for this row, in the row's unit, with its direction. */
  target?: { value: number; better: 'lower' | 'higher'; label: string; on: 'p50' | 'p99' | 'throughput' | 'value' | 'ratio' };
  /** Free-form details (e.g. per-sandbox memory numbers). */
  extra?: Record<string, number | string>;
}

export interface ScenarioResult {
  name: string;
  title: string;
  rows: Row[];
  notes: string[];
  errors: string[];
  wallMs: number;
}

export interface BenchOptions {
  quick: boolean;
  outDir: string;
  only: string[] | null;
  debian: boolean;
}
