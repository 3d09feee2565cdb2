/**
 * Scenario 1 — time to first command: `Sandbox.create` + `commands.run('echo hi')`.
 * Row `ttfc.cold` has no pool behind it (the main bench daemon has none);
 * `ttfc.warm-pool` asks a second daemon started with `--pool busybox=2`, once
 * its pool is full and idle, so each sample is a claim (checked with the
 * pool's counters); the pool refills, untimed, before the next sample.
 */
import { Sandbox, type ConnectionOptions } from '../src/sdk/index.js';
import { bwrapTrue, spawnTrue } from './baselines.js';
import { interleave, linkRatios, row, type Scenario } from './context.js';
import { withPoolDaemon } from './pool-daemon.js';
import { now } from './stats.js';

const POOL_SIZE = 2;

export const ttfc: Scenario = (ctx) =>
  withPoolDaemon(ctx, 'ttfc-pool', { template: 'busybox', size: POOL_SIZE }, async (pd) => {
    const errors: string[] = [];
    const notes: string[] = [];
    const n = ctx.quick ? 6 : 40;
    const crunSlot = 0;
    const firstCommand = (conn: ConnectionOptions, template: string) => async () => {
      const t0 = now();
      const s = await Sandbox.create({ ...conn, template });
      let ms: number;
      try {
        const r = await s.commands.run('echo hi');
        ms = now() - t0;
        if (r.stdout !== 'hi\n' || r.exitCode !== 0) throw new Error(`echo hi gave exit ${r.exitCode}, stdout ${JSON.stringify(r.stdout)}`);
      } finally {
        await s.kill();
      }
      return ms;
    };
    const coldStep = (template: string) => firstCommand(ctx.conn, template);
    const warm = firstCommand(pd.conn, 'busybox');
    const warmStep = async () => {
      await pd.filled(POOL_SIZE);
      const claims = (await pd.state()).claims;
      const ms = await warm();
      const after = await pd.state();
      if (after.claims !== claims + 1) throw new Error(`the create was not served by the pool: ${JSON.stringify(after)}`);
      return ms;
    };
    const steps = [
      { name: 'ttfc.cold', run: coldStep('busybox') },
      { name: 'ttfc.warm-pool', run: warmStep },
      {
        name: 'crun run -d + exec echo',
        run: async () => {
          const t0 = now();
          const id = await ctx.crun.start(crunSlot);
          let ms: number;
          try {
            const out = await ctx.crun.exec(id, ['echo', 'hi'], { capture: true });
            ms = now() - t0;
            if (out !== 'hi\n') throw new Error(`crun exec echo printed ${JSON.stringify(out)}`);
          } finally {
            await ctx.crun.delete(id);
          }
          return ms;
        },
      },
      {
        name: 'bwrap /bin/true',
        run: async () => {
          const t0 = now();
          await bwrapTrue(ctx.templateRootfs);
          return now() - t0;
        },
      },
      {
        name: 'spawn /bin/true',
        run: async () => {
          const t0 = now();
          await spawnTrue();
          return now() - t0;
        },
      },
    ];
    if (ctx.debian) steps.push({ name: 'ttfc.cold.debian', run: coldStep('debian') });
    // Untimed: the pool daemon is fresh (the main one was warmed up by the harness).
    await warmStep();
    const got = await interleave(n, steps, errors);
    const rows = [
      row('ttfc.cold', 'capsule', 'ms', got.get('ttfc.cold')!, {
        vs: 'crun run -d + exec echo',
        target: { value: 40, better: 'lower', label: '≤ 40 ms cold', on: 'p50' },
      }),
    ];
    rows.push(
      row('ttfc.warm-pool', 'capsule', 'ms', got.get('ttfc.warm-pool')!, {
        vs: 'crun run -d + exec echo',
        target: { value: 10, better: 'lower', label: '≤ 10 ms from a warm pool', on: 'p50' },
      }),
    );
    if (ctx.debian) rows.push(row('ttfc.cold.debian', 'capsule', 'ms', got.get('ttfc.cold.debian')!, { vs: 'crun run -d + exec echo' }));
    rows.push(
      row('crun run -d + exec echo', 'baseline', 'ms', got.get('crun run -d + exec echo')!, { vs: 'spawn /bin/true' }),
      row('bwrap /bin/true', 'baseline', 'ms', got.get('bwrap /bin/true')!, { vs: 'spawn /bin/true' }),
      row('spawn /bin/true', 'floor', 'ms', got.get('spawn /bin/true')!),
    );
    linkRatios(rows);
    notes.push('cold = a daemon without a pool; the busybox template is already built. Teardown is not timed.');
    notes.push(
      `warm-pool = a second daemon with \`--pool busybox=${POOL_SIZE}\`, sampled when its pool is full and idle (the refill after each sample is not timed); every sample was checked to be a claim.`,
    );
    return { name: 'ttfc', title: 'Time to first command (create + `echo hi`)', rows, notes, errors };
  });
