/**
 * Scenario — lifecycle: pause, resume, stop and start of one idle sandbox
 * through the SDK, next to raw `crun pause` / `crun resume` on an equivalent
 * container and raw `crun delete -f` / `crun run -d` (what a stop and a start
 * cost the runtime alone), interleaved in the same run. The goal:
 * pause and resume ≤ 15 ms each (p50).
 *
 * Each step puts the sandbox back untimed (a timed pause is followed by an
 * untimed resume, and so on), so every sample starts from the same state.
 */
import { Sandbox } from '../src/sdk/index.js';
import { interleave, linkRatios, row, type Scenario } from './context.js';
import { now } from './stats.js';

export const lifecycle: Scenario = async (ctx) => {
  const errors: string[] = [];
  const n = ctx.quick ? 20 : 200;
  const nStop = ctx.quick ? 10 : 60;
  const sbx = await Sandbox.create({ ...ctx.conn, template: 'busybox', timeoutMs: 3600_000 });
  // A second sandbox keeps its CPU quota busy: a freeze then has running tasks to stop.
  const busy = await Sandbox.create({ ...ctx.conn, template: 'busybox', timeoutMs: 3600_000 });
  await busy.commands.run('while :; do :; done', { background: true });
  let cid = await ctx.crun.start(0);
  const timed = async (fn: () => Promise<unknown>) => {
    const t0 = now();
    await fn();
    return now() - t0;
  };
  try {
    // Warm both paths (JIT, connection pool, page cache) before measuring.
    for (let i = 0; i < 3; i++) {
      await sbx.pause();
      await sbx.resume();
      await ctx.crun.freeze(cid, 'pause');
      await ctx.crun.freeze(cid, 'resume');
    }
    const freeze = await interleave(n, [
      { name: 'pause (sdk)', run: async () => { const ms = await timed(() => sbx.pause()); await sbx.resume(); return ms; } },
      { name: 'resume (sdk)', run: async () => { await sbx.pause(); return timed(() => sbx.resume()); } },
      { name: 'crun pause', run: async () => { const ms = await timed(() => ctx.crun.freeze(cid, 'pause')); await ctx.crun.freeze(cid, 'resume'); return ms; } },
      { name: 'crun resume', run: async () => { await ctx.crun.freeze(cid, 'pause'); return timed(() => ctx.crun.freeze(cid, 'resume')); } },
      { name: 'pause (sdk, busy)', run: async () => { const ms = await timed(() => busy.pause()); await busy.resume(); return ms; } },
      { name: 'resume (sdk, busy)', run: async () => { await busy.pause(); return timed(() => busy.resume()); } },
    ], errors);
    const check = await sbx.commands.run('echo ok');
    if (check.stdout !== 'ok\n') errors.push(`after ${n} pause/resume pairs the sandbox answered ${JSON.stringify(check.stdout)}`);

    const stopStart = await interleave(nStop, [
      { name: 'stop (sdk)', run: async () => { const ms = await timed(() => sbx.stop()); await sbx.start(); return ms; } },
      { name: 'start (sdk)', run: async () => { await sbx.stop(); return timed(() => sbx.start()); } },
      { name: 'crun delete -f', run: async () => { const ms = await timed(() => ctx.crun.delete(cid)); cid = await ctx.crun.start(0); return ms; } },
      { name: 'crun run -d', run: async () => { await ctx.crun.delete(cid); const t0 = now(); cid = await ctx.crun.start(0); return now() - t0; } },
    ], errors);
    const after = await sbx.commands.run('echo ok');
    if (after.stdout !== 'ok\n') errors.push(`after ${nStop} stop/start pairs the sandbox answered ${JSON.stringify(after.stdout)}`);

    const rows = [
      row('pause (sdk)', 'capsule', 'ms', freeze.get('pause (sdk)')!, { vs: 'crun pause', target: { value: 15, better: 'lower', label: '≤ 15 ms', on: 'p50' } }),
      row('resume (sdk)', 'capsule', 'ms', freeze.get('resume (sdk)')!, { vs: 'crun resume', target: { value: 15, better: 'lower', label: '≤ 15 ms', on: 'p50' } }),
      row('pause (sdk, busy)', 'capsule', 'ms', freeze.get('pause (sdk, busy)')!, { vs: 'crun pause' }),
      row('resume (sdk, busy)', 'capsule', 'ms', freeze.get('resume (sdk, busy)')!, { vs: 'crun resume' }),
      row('crun pause', 'baseline', 'ms', freeze.get('crun pause')!),
      row('crun resume', 'baseline', 'ms', freeze.get('crun resume')!),
      row('stop (sdk)', 'capsule', 'ms', stopStart.get('stop (sdk)')!, { vs: 'crun delete -f' }),
      row('start (sdk)', 'capsule', 'ms', stopStart.get('start (sdk)')!, { vs: 'crun run -d' }),
      row('crun delete -f', 'baseline', 'ms', stopStart.get('crun delete -f')!),
      row('crun run -d', 'baseline', 'ms', stopStart.get('crun run -d')!),
    ];
    linkRatios(rows);
    return {
      name: 'lifecycle',
      title: 'Pause, resume, stop and start of an idle sandbox',
      rows,
      notes: [
        'SDK → HTTP → daemon → state machine step → runtime → state machine step → HTTP response. Pause writes FROZEN to the v1 freezer and waits until the kernel reports FROZEN (`crun pause` may return while FREEZING); resume writes THAWED.',
        'stop: kill and delete the container, unmount the overlay and the disk (never lazily) and fsync the disk image; start: a new loop device, mount the kept disk and the overlay, `crun run -d` of the same bundle, and the agent answering.',
        'busy: a sandbox running a shell loop that keeps its 1-CPU quota full (the raw crun container is idle, so its ratio overstates the cost).',
        'Baselines on a raw crun container with the same spec (userns, seccomp, cgroups) and `sleep` as init, interleaved with Capsule\'s samples: `crun pause`/`resume`, and `crun delete -f`/`crun run -d` (without any disk or overlay work).',
      ],
      errors,
    };
  } finally {
    await sbx.kill().catch(() => undefined);
    await busy.kill().catch(() => undefined);
    await ctx.crun.delete(cid).catch(() => undefined);
  }
};
