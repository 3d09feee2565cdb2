/**
 * What every scenario gets: the daemon, SDK connection options, the raw-crun
 * baseline and helpers to build rows and to interleave measurements.
 */
import type { ConnectionOptions } from '../src/sdk/index.js';
import type { CrunBaseline } from './baselines.js';
import type { BenchDaemon } from './daemon.js';
import { summarize } from './stats.js';
import type { Row, RowKind, ScenarioResult } from './types.js';

export interface BenchContext {
  daemon: BenchDaemon;
  conn: ConnectionOptions;
  crun: CrunBaseline;
  templateRootfs: string;
  quick: boolean;
  debian: boolean;
  /** Progress lines (stderr). */
  say(msg: string): void;
}

/** Request timeout for a create that may build its template first (minutes on a fresh machine; never timed). */
export const FIRST_BUILD_TIMEOUT_MS = 30 * 60_000;

export type Scenario = (ctx: BenchContext) => Promise<Omit<ScenarioResult, 'wallMs'>>;

export function row(name: string, kind: RowKind, unit: Row['unit'], samples: number[], more: Partial<Row> = {}): Row {
  return { name, kind, unit, samples, summary: summarize(samples), ...more };
}

/** Fill in `ratio` = p50 / p50 of the row named in `vs` (or throughput ratio when both have one). */
export function linkRatios(rows: Row[]): void {
  for (const r of rows) {
    if (!r.vs) continue;
    const b = rows.find((x) => x.name === r.vs);
    if (!b) continue;
    if (r.throughput !== undefined && b.throughput !== undefined && b.throughput > 0) r.ratio = r.throughput / b.throughput;
    else if (b.summary.p50 > 0) r.ratio = r.summary.p50 / b.summary.p50;
  }
}

/**
 * Run `iterations` rounds; each round runs every step once, in an order that
 * rotates from round to round, so slow drift and ordering effects hit every
 * series alike. A step returns its own measured ms (so untimed setup and
 * teardown can live inside it) or throws; errors are collected, not fatal,
 * until `maxErrors` of them.
 */
export async function interleave(
  iterations: number,
  steps: Array<{ name: string; run: (i: number) => Promise<number> }>,
  errors: string[],
  maxErrors = 5,
): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>(steps.map((s) => [s.name, []]));
  let failures = 0;
  for (let i = 0; i < iterations; i++) {
    for (let k = 0; k < steps.length; k++) {
      const s = steps[(i + k) % steps.length]!;
      try {
        out.get(s.name)!.push(await s.run(i));
      } catch (e) {
        failures++;
        errors.push(`${s.name} #${i}: ${(e as Error).message}`);
        if (failures >= maxErrors) throw new Error(`too many failures (${failures}); last: ${(e as Error).message}`);
      }
    }
  }
  return out;
}
