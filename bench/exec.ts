/**
 * Scenario 2 — exec round trip of `true` (argv form) in a running sandbox,
 * against `crun exec` in a running baseline container and the spawn floor.
 * A second connection straight to the sandbox's agent socket (no HTTP, no
 * daemon) shows how much of the round trip is the agent's own fork+exec.
 */
import path from 'node:path';
import { connectAgent } from '../src/agent/client.js';
import { Sandbox } from '../src/sdk/index.js';
import { spawnTrue } from './baselines.js';
import { interleave, linkRatios, row, type Scenario } from './context.js';
import { now } from './stats.js';

export const exec: Scenario = async (ctx) => {
  const errors: string[] = [];
  const n = ctx.quick ? 40 : 300;
  const sbx = await Sandbox.create({ ...ctx.conn, template: 'busybox' });
  const cid = await ctx.crun.start(0);
  // The daemon's socket layout (config paths.agentSocket); the agent accepts more than one connection.
  const agent = await connectAgent(path.join(ctx.daemon.dataDir, 'run', `${sbx.id}.sock`));
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
        name: 'agent exec true (socket)',
        run: async () => {
          const t0 = now();
          const p = await agent.exec({ argv: ['true'], env: {}, stdin: false });
          const st = await p.exited;
          const ms = now() - t0;
          if (st.exitCode !== 0) throw new Error(`true exited ${st.exitCode}`);
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
      row('agent exec true (socket)', 'baseline', 'ms', got.get('agent exec true (socket)')!, { vs: 'spawn /bin/true' }),
      row('crun exec true', 'baseline', 'ms', got.get('crun exec true')!, { vs: 'spawn /bin/true' }),
      row('spawn /bin/true', 'floor', 'ms', got.get('spawn /bin/true')!),
    ];
    linkRatios(rows);
    return {
      name: 'exec',
      title: 'Exec round trip of `true` in a running sandbox',
      rows,
      notes: [
        'SDK → HTTP → daemon → agent (fork+exec in the sandbox) → exit → HTTP response; buffered (non-streaming) run.',
        'agent exec true (socket): the bench process talks to the agent directly over its unix socket; exec (sdk) minus this is the cost of HTTP, the daemon and the SDK.',
      ],
      errors,
    };
  } finally {
    agent.close();
    await sbx.kill().catch(() => undefined);
    await ctx.crun.delete(cid).catch(() => undefined);
  }
};
