/**
 * Small statistics helpers for the benchmark: percentiles (nearest rank),
 * summaries and a monotonic millisecond clock.
 */

export interface Summary {
  n: number;
  min: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
  mean: number;
}

/** Milliseconds from a monotonic clock. */
export function now(): number {
  return performance.now();
}

/** Run `fn` and return how long it took in ms, plus its value. */
export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = now();
  const value = await fn();
  return { ms: now() - t0, value };
}

/** Nearest-rank percentile of an already sorted array (q in 0..100). */
export function percentileSorted(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((q / 100) * sorted.length);
  const idx = Math.min(sorted.length - 1, Math.max(0, rank - 1));
  return sorted[idx]!;
}

export function summarize(samples: readonly number[]): Summary {
  const s = [...samples].sort((a, b) => a - b);
  const n = s.length;
  const mean = n === 0 ? NaN : s.reduce((a, b) => a + b, 0) / n;
  return {
    n,
    min: n ? s[0]! : NaN,
    p50: percentileSorted(s, 50),
    p95: percentileSorted(s, 95),
    p99: percentileSorted(s, 99),
    max: n ? s[n - 1]! : NaN,
    mean,
  };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Round for display: 3 significant-ish digits. */
export function fmt(x: number | undefined, digits = 2): string {
  if (x === undefined || !Number.isFinite(x)) return '–';
  if (Math.abs(x) >= 100) return x.toFixed(0);
  if (Math.abs(x) >= 10) return x.toFixed(1);
  return x.toFixed(digits);
}
