/**
 * Scenario 3 — sustained creates/s: create → exec `true` → kill loops at
 * concurrency 1, 4 and 16. Each level alternates time slices of Capsule and
 * of raw crun (`run -d` → `exec true` → `delete -f`) so drift hits both;
 * per-op latency percentiles and throughput (ops / wall time of the slices).
 *
 * Then the warm pool (a second daemon with `--pool busybox=32`, see
 * pool-daemon.ts): bursts of 32 concurrent creates from a full pool, next to
 * the same burst on the pool-less daemon; and cold creates while that pool is
 * refilling, next to the same loop on the pool-less daemon, to show refills
 * do not slow user creates down.
 */
import { Sandbox, type ConnectionOptions } from '../src/sdk/index.js';
import { linkRatios, row, type BenchContext, type Scenario } from './context.js';
import { withPoolDaemon, type PoolDaemon } from './pool-daemon.js';
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

const BURST = 32;

/** `BURST` creates at once; per-create latency, wall time of the whole burst. Kills are not timed. */
async function burst(conn: ConnectionOptions): Promise<Phase> {
  const lat: number[] = [];
  const t0 = now();
  const made = await Promise.all(
    Array.from({ length: BURST }, async () => {
      const s0 = now();
      const s = await Sandbox.create({ ...conn, template: 'busybox' });
      lat.push(now() - s0);
      return s;
    }),
  );
  const wallMs = now() - t0;
  for (let i = 0; i < made.length; i += 8) await Promise.all(made.slice(i, i + 8).map((s) => s.kill()));
  return { lat, ops: made.length, wallMs };
}

function add(acc: Phase, p: Phase): void {
  acc.lat.push(...p.lat);
  acc.ops += p.ops;
  acc.wallMs += p.wallMs;
}

/** Create with limits no pooled sandbox can take (other /dev sizes), so it is cold on either daemon. */
function coldOp(conn: ConnectionOptions) {
  return async () => {
    const s = await Sandbox.create({ ...conn, template: 'busybox', resources: { memoryMb: 256 } });
    try {
      await s.commands.run(['true']);
    } finally {
      await s.kill();
    }
  };
}

async function poolRows(ctx: BenchContext, pd: PoolDaemon, errors: string[]): Promise<{ rows: Row[]; notes: string[] }> {
  const rounds = ctx.quick ? 1 : 5;
  const warm: Phase = { lat: [], ops: 0, wallMs: 0 };
  const cold: Phase = { lat: [], ops: 0, wallMs: 0 };
  const busy: Phase = { lat: [], ops: 0, wallMs: 0 };
  const idle: Phase = { lat: [], ops: 0, wallMs: 0 };
  let refilledDuring = 0;
  const sliceMs = ctx.quick ? 2000 : 6000;
  // One untimed burst on each daemon first: the pool daemon is fresh (cold JIT, no kept-alive connections yet).
  await pd.filled(BURST);
  await burst(pd.conn);
  await burst(ctx.conn);
  for (let r = 0; r < rounds; r++) {
    const warmBurst = async () => {
      await pd.filled(BURST);
      const before = await pd.state();
      add(warm, await burst(pd.conn));
      const after = await pd.state();
      if (after.claims - before.claims !== BURST) errors.push(`burst ${r}: only ${after.claims - before.claims} of ${BURST} creates were claims`);
      // The pool is now empty and wants BURST starts: cold creates race its refill.
      const startedBefore = (await pd.state()).started;
      add(busy, await loop(4, sliceMs, coldOp(pd.conn), errors, 'cold c=4 while the pool refills'));
      refilledDuring += (await pd.state()).started - startedBefore;
    };
    const coldBurst = async () => {
      add(cold, await burst(ctx.conn));
      add(idle, await loop(4, sliceMs, coldOp(ctx.conn), errors, 'cold c=4 without a pool'));
    };
    for (const go of r % 2 === 0 ? [warmBurst, coldBurst] : [coldBurst, warmBurst]) await go();
  }
  const rate = (p: Phase) => p.ops / (p.wallMs / 1000);
  const rows = [
    row(`burst of ${BURST} creates from a warm pool`, 'capsule', 'ms', warm.lat, {
      throughput: rate(warm),
      vs: `burst of ${BURST} cold creates`,
      target: { value: 500, better: 'higher', label: '≥ 500 creates/s', on: 'throughput' },
    }),
    row(`burst of ${BURST} cold creates`, 'capsule', 'ms', cold.lat, { throughput: rate(cold) }),
    row('create→exec→kill c=4, cold, pool refilling', 'capsule', 'ms', busy.lat, {
      throughput: rate(busy),
      vs: 'create→exec→kill c=4, cold, no pool',
      extra: { poolStartsDuringSlices: refilledDuring },
    }),
    row('create→exec→kill c=4, cold, no pool', 'capsule', 'ms', idle.lat, { throughput: rate(idle) }),
  ];
  return {
    rows,
    notes: [
      `Bursts: ${rounds} round(s) of ${BURST} concurrent \`Sandbox.create\` on a daemon with \`--pool busybox=${BURST}\` (full and idle at the start; every create checked to be a claim) and on the pool-less daemon, alternating; creates/s = ${BURST} / wall time of the burst.`,
      `Refill vs user creates: right after each warm burst the pool is empty, and create→exec→kill loops (c=4, memoryMb 256 so no create can claim) run for ${sliceMs / 1000} s while it wants to refill; the pool started ${refilledDuring} sandbox(es) during those slices (it refills one at a time, only while no create is in flight). Compared with the same loop on the pool-less daemon.`,
    ],
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
  ctx.say(`  burst of ${BURST} from a warm pool`);
  const pool = await withPoolDaemon(ctx, 'burst-pool', { template: 'busybox', size: BURST }, (pd) => poolRows(ctx, pd, errors));
  rows.push(...pool.rows);
  linkRatios(rows);
  return {
    name: 'sustained',
    title: 'Sustained create → exec → kill (per-op latency, ops/s)',
    rows,
    notes: [
      `${rounds} round(s) per level of ${sliceMs / 1000} s for Capsule and ${sliceMs / 1000} s for raw crun, alternating; ratio = throughput ratio (capsule / crun).`,
      'The kill is part of each op (the issue counts a create as usable only once the previous one is cleaned up).',
      ...pool.notes,
    ],
    errors,
  };
};
