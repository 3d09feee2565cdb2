/**
 * Scenario 2 — exec round trip of `true` (argv form) in a running sandbox,
 * against `crun exec` in a running baseline container and the spawn floor.
 */
import { Sandbox } from '../src/sdk/index.js';
import { spawnTrue } from './baselines.js';
import { interleave, linkRatios, row, type Scenario } from './context.js';
import { now } from './stats.js';

export const exec: Scenario = async (ctx) => {
  const errors: string[] = [];
  const n = ctx.quick ? 40 : 300;
  const sbx = await Sandbox.create({ ...ctx.conn, template: 'busybox' });
  const cid = await ctx.crun.start(0);
  try {
    // Warm both paths (JIT, connection pool, page cache) before measuring.
    for (let i = 0; i < 5; i++) {
      await sbx.commands.run(['true']);
      await ctx.crun.exec(cid, ['true']);
    }
    const got = await interleave(n, [
      {
        name: 'exec true (sdk)',
        run: async () => {
          const t0 = now();
          const r = await sbx.commands.run(['true']);
          const ms = now() - t0;
          if (r.exitCode !== 0) throw new Error(`true exited ${r.exitCode}`);
          return ms;
        },
      },
      {
        name: 'crun exec true',
        run: async () => {
          const t0 = now();
          await ctx.crun.exec(cid, ['true']);
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
    ], errors);
    const rows = [
      row('exec true (sdk)', 'capsule', 'ms', got.get('exec true (sdk)')!, {
        vs: 'crun exec true',
        target: { value: 2, better: 'lower', label: '≤ 2 ms', on: 'p50' },
      }),
      row('crun exec true', 'baseline', 'ms', got.get('crun exec true')!, { vs: 'spawn /bin/true' }),
      row('spawn /bin/true', 'floor', 'ms', got.get('spawn /bin/true')!),
    ];
    linkRatios(rows);
    return {
      name: 'exec',
      title: 'Exec round trip of `true` in a running sandbox',
      rows,
      notes: ['SDK → HTTP → daemon → agent (fork+exec in the sandbox) → exit → HTTP response; buffered (non-streaming) run.'],
      errors,
    };
  } finally {
    await sbx.kill().catch(() => undefined);
    await ctx.crun.delete(cid).catch(() => undefined);
  }
};
