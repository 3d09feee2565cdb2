/**
 * Scenario 2 — exec round trip of `true` (argv form) in a running sandbox,
 * against `crun exec` in a running baseline container and the spawn floor.
 * A second connection straight to the sandbox's agent socket (no HTTP, no
 * daemon) shows how much of the round trip is the agent's own fork+exec.
 */
import { connectAgent } from '../src/agent/client.js';
import { Sandbox } from '../src/sdk/index.js';
import { spawnTrue } from './baselines.js';
import { startHttpFloor } from './http-floor.js';
import { agentSocketOf } from './daemon.js';
import { startWsFloor } from './ws-floor.js';
import { interleave, linkRatios, row, type Scenario } from './context.js';
import { now } from './stats.js';

export const exec: Scenario = async (ctx) => {
  const errors: string[] = [];
  const n = ctx.quick ? 40 : 300;
  // The SDK's default path: buffered runs over its command channel (one WebSocket per Sandbox).
  const sbx = await Sandbox.create({ ...ctx.conn, template: 'busybox' });
  // The same sandbox through the SDK's HTTP path (one POST per run), for comparison.
  const overHttp = await Sandbox.connect(sbx.id, { ...ctx.conn, commandChannel: false });
  const cid = await ctx.crun.start(0);
  const socketPath = agentSocketOf(ctx.daemon, sbx.id);
  const agent = await connectAgent(socketPath);
  const floor = await startHttpFloor(socketPath);
  const wsFloor = await startWsFloor(socketPath);
  try {
    // Warm both paths (JIT, connection pool, page cache) before measuring.
    for (let i = 0; i < 5; i++) {
      await sbx.commands.run(['true']);
      await overHttp.commands.run(['true']);
      await floor.exec(['true']);
      await wsFloor.exec(['true']);
      await ctx.crun.exec(cid, ['true']);
    }
    // The sub-millisecond rows are interleaved with each other only: between 6 ms crun exec calls (each
    // forking crun, which forks again) they all ran ~30% slower from cold caches, the bare floor included.
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
        name: 'exec true (sdk, http)',
        run: async () => {
          const t0 = now();
          const r = await overHttp.commands.run(['true']);
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
        name: 'http floor (bare proxy)',
        run: async () => {
          const t0 = now();
          const code = await floor.exec(['true']);
          const ms = now() - t0;
          if (code !== 0) throw new Error(`true exited ${code}`);
          return ms;
        },
      },
      {
        name: 'ws floor (bare proxy)',
        run: async () => {
          const t0 = now();
          const code = await wsFloor.exec(['true']);
          const ms = now() - t0;
          if (code !== 0) throw new Error(`true exited ${code}`);
          return ms;
        },
      },
    ], errors);
    const heavy = await interleave(n, [
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
        vs: 'agent exec true (socket)',
        target: { value: 1.5, better: 'lower', label: '≤ 1.5× agent', on: 'ratio' },
      }),
      row('exec true (sdk, http)', 'capsule', 'ms', got.get('exec true (sdk, http)')!, { vs: 'agent exec true (socket)' }),
      row('http floor (bare proxy)', 'floor', 'ms', got.get('http floor (bare proxy)')!, { vs: 'agent exec true (socket)' }),
      row('ws floor (bare proxy)', 'floor', 'ms', got.get('ws floor (bare proxy)')!, { vs: 'agent exec true (socket)' }),
      row('agent exec true (socket)', 'baseline', 'ms', got.get('agent exec true (socket)')!, { vs: 'spawn /bin/true' }),
      row('crun exec true', 'baseline', 'ms', heavy.get('crun exec true')!, { vs: 'spawn /bin/true' }),
      row('spawn /bin/true', 'floor', 'ms', heavy.get('spawn /bin/true')!),
    ];
    linkRatios(rows);
    const sdk = rows[0]!;
    const crunRow = rows.find((r) => r.name === 'crun exec true')!;
    const wsRow = rows.find((r) => r.name === 'ws floor (bare proxy)')!;
    const agentRow = rows.find((r) => r.name === 'agent exec true (socket)')!;
    sdk.extra = {
      'vs crun exec true': Number((sdk.summary.p50 / crunRow.summary.p50).toFixed(2)),
      // What Capsule adds over a bare WebSocket proxy in front of the same agent, in agent round trips:
      // the part of the ratio that is Capsule's own work rather than one more hop on this machine.
      'over ws floor (x agent)': Number(((sdk.summary.p50 - wsRow.summary.p50) / agentRow.summary.p50).toFixed(2)),
    };
    return {
      name: 'exec',
      title: 'Exec round trip of `true` in a running sandbox',
      rows,
      notes: [
        "exec true (sdk): the SDK's default path, SDK → command channel (one WebSocket per Sandbox, GET /v1/channel) → daemon → agent (fork+exec in the sandbox) → exit → one message back; buffered (non-streaming) run.",
        'exec true (sdk, http): the same sandbox and run through a Sandbox with commandChannel: false (one POST per run).',
        'agent exec true (socket): the bench process talks to the agent directly over its unix socket; exec (sdk) minus this is the cost of HTTP, the daemon and the SDK.',
        'exec (sdk, both paths), agent alone and the two floors are interleaved with each other; crun exec and spawn in a second interleaved series (their forks left the sub-millisecond rows ~30% slower from cold caches when mixed in).',
        'ws floor (bare proxy): the same in front of the same agent over one open WebSocket, one JSON message each way (the least the command channel could cost).',
        'http floor (bare proxy): a bare node:http client and a bare node:http server in another process that forwards to the same agent (no auth, validation, state or framework): the least an HTTP hop adds on this machine.',
      ],
      errors,
    };
  } finally {
    floor.close();
    wsFloor.close();
    agent.close();
    overHttp.close();
    await sbx.kill().catch(() => undefined);
    await ctx.crun.delete(cid).catch(() => undefined);
  }
};
