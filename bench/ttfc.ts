/**
 * Scenario 1 — time to first command: `Sandbox.create` + `commands.run('echo hi')`.
 * Row `ttfc.cold` has no pool behind it; a warm pool becomes another row
 * (`ttfc.warm-pool`) next to it when it exists.
 */
import { Sandbox } from '../src/sdk/index.js';
import { bwrapTrue, spawnTrue } from './baselines.js';
import { interleave, linkRatios, row, type Scenario } from './context.js';
import { now } from './stats.js';

export const ttfc: Scenario = async (ctx) => {
  const errors: string[] = [];
  const notes: string[] = [];
  const n = ctx.quick ? 6 : 40;
  const crunSlot = 0;
  const coldStep = (template: string) => async () => {
    const t0 = now();
    const s = await Sandbox.create({ ...ctx.conn, template });
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
  const steps = [
    { name: 'ttfc.cold', run: coldStep('busybox') },
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
  const got = await interleave(n, steps, errors);
  const rows = [
    row('ttfc.cold', 'capsule', 'ms', got.get('ttfc.cold')!, {
      vs: 'crun run -d + exec echo',
      target: { value: 40, better: 'lower', label: '≤ 40 ms cold', on: 'p50' },
    }),
  ];
  if (ctx.debian) rows.push(row('ttfc.cold.debian', 'capsule', 'ms', got.get('ttfc.cold.debian')!, { vs: 'crun run -d + exec echo' }));
  rows.push(
    row('crun run -d + exec echo', 'baseline', 'ms', got.get('crun run -d + exec echo')!, { vs: 'spawn /bin/true' }),
    row('bwrap /bin/true', 'baseline', 'ms', got.get('bwrap /bin/true')!, { vs: 'spawn /bin/true' }),
    row('spawn /bin/true', 'floor', 'ms', got.get('spawn /bin/true')!),
  );
  linkRatios(rows);
  notes.push('cold = no pre-started sandbox (no pool exists yet); the busybox template is already built. Teardown is not timed.');
  notes.push('ttfc.warm-pool: not measured (no pool yet); target ≤ 10 ms.');
  return { name: 'ttfc', title: 'Time to first command (create + `echo hi`)', rows, notes, errors };
};
