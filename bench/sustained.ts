/**
 * Scenario 3 — sustained creates/s: create → exec `true` → kill loops at
 * concurrency 1, 4 and 16. Each level alternates time slices of Capsule and
 * of raw crun (`run -d` → `exec true` → `delete -f`) so drift hits both;
 * per-op latency percentiles and throughput (ops / wall time of the slices).
 */
import { Sandbox } from '../src/sdk/index.js';
import { linkRatios, row, type BenchContext, type Scenario } from './context.js';
import { now } from './stats.js';
import type { Row } from './types.js';

interface Phase {
  lat: number[];
  ops: number;
  wallMs: number;
}

async function loop(concurrency: number, sliceMs: number, op: (worker: number) => Promise<void>, errors: string[], label: string): Promise<Phase> {
  const lat: number[] = [];
  const t0 = now();
  const deadline = t0 + sliceMs;
  let failures = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, w) => {
      while (now() < deadline && failures < 5) {
        const s = now();
        try {
          await op(w);
          lat.push(now() - s);
        } catch (e) {
          failures++;
          errors.push(`${label} worker ${w}: ${(e as Error).message}`);
        }
      }
    }),
  );
  if (failures >= 5) throw new Error(`${label}: too many failures; last: ${errors[errors.length - 1]}`);
  return { lat, ops: lat.length, wallMs: now() - t0 };
}

function capsuleOp(ctx: BenchContext) {
  return async () => {
    const s = await Sandbox.create({ ...ctx.conn, template: 'busybox' });
    try {
      const r = await s.commands.run(['true']);
      if (r.exitCode !== 0) throw new Error(`true exited ${r.exitCode}`);
    } finally {
      await s.kill();
    }
  };
}

function crunOp(ctx: BenchContext) {
  return async (worker: number) => {
    const id = await ctx.crun.start(worker);
    try {
      await ctx.crun.exec(id, ['true']);
    } finally {
      await ctx.crun.delete(id);
    }
  };
}

export const sustained: Scenario = async (ctx) => {
  const errors: string[] = [];
  const rows: Row[] = [];
  const levels = [1, 4, 16];
  const rounds = ctx.quick ? 1 : 2;
  const sliceMs = ctx.quick ? 2000 : 12_000;
  for (const c of levels) {
    ctx.say(`  concurrency ${c}`);
    const cap: Phase = { lat: [], ops: 0, wallMs: 0 };
    const raw: Phase = { lat: [], ops: 0, wallMs: 0 };
    for (let r = 0; r < rounds; r++) {
      const order: Array<[Phase, () => Promise<Phase>]> = [
        [cap, () => loop(c, sliceMs, capsuleOp(ctx), errors, `capsule c=${c}`)],
        [raw, () => loop(c, sliceMs, crunOp(ctx), errors, `crun c=${c}`)],
      ];
      if (r % 2 === 1) order.reverse();
      for (const [acc, go] of order) {
        const p = await go();
        acc.lat.push(...p.lat);
        acc.ops += p.ops;
        acc.wallMs += p.wallMs;
      }
    }
    const capName = `create→exec→kill c=${c}`;
    const rawName = `crun run→exec→delete c=${c}`;
    rows.push(
      row(capName, 'capsule', 'ms', cap.lat, {
        throughput: cap.ops / (cap.wallMs / 1000),
        vs: rawName,
        target: { value: 60, better: 'higher', label: '≥ 60 creates/s', on: 'throughput' },
      }),
      row(rawName, 'baseline', 'ms', raw.lat, { throughput: raw.ops / (raw.wallMs / 1000) }),
    );
  }
  linkRatios(rows);
  return {
    name: 'sustained',
    title: 'Sustained create → exec → kill (per-op latency, ops/s)',
    rows,
    notes: [
      `${rounds} round(s) per level of ${sliceMs / 1000} s for Capsule and ${sliceMs / 1000} s for raw crun, alternating; ratio = throughput ratio (capsule / crun).`,
      'The kill is part of each op (the issue counts a create as usable only once the previous one is cleaned up).',
    ],
    errors,
  };
};
