/**
 * Scenario — lifecycle: pause, resume, stop and start of one idle sandbox
 * through the SDK, next to raw `crun pause` / `crun resume` on an equivalent
 * container and raw `crun delete -f` / `crun run -d` (what a stop and a start
 * cost the runtime alone), interleaved in the same run. The issue's goal:
 * pause and resume ≤ 15 ms each (p50).
 *
 * Filesystem snapshots and forks (issue 12's goal: a fork from a snapshot with
 * 100 MB changed ≤ 150 ms): `snapshot` of a sandbox that wrote 100 MB, next to
 * a raw `cp -a` of the same upper dir (what the copy alone costs), and a fork
 * (a create from that snapshot) next to a cold create from the template and
 * raw `crun run -d`.
 *
 * Each step puts the sandbox back untimed (a timed pause is followed by an
 * untimed resume, and so on), so every sample starts from the same state.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { Sandbox, Snapshot } from '../src/sdk/index.js';
import { interleave, linkRatios, row, type Scenario } from './context.js';
import { now } from './stats.js';

const execFileP = promisify(execFile);

export const lifecycle: Scenario = async (ctx) => {
  const errors: string[] = [];
  const n = ctx.quick ? 20 : 200;
  const nStop = ctx.quick ? 10 : 60;
  const sbx = await Sandbox.create({ ...ctx.conn, template: 'busybox', timeoutMs: 3600_000 });
  // A second sandbox keeps its CPU quota busy: a freeze then has running tasks to stop.
  const busy = await Sandbox.create({ ...ctx.conn, template: 'busybox', timeoutMs: 3600_000 });
  await busy.commands.run('while :; do :; done', { background: true });
  const extra: Sandbox[] = [];
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

    // Snapshots and forks: one source with 100 MB written, one snapshot of it kept for the forks.
    const nSnap = ctx.quick ? 3 : 10;
    const nFork = ctx.quick ? 5 : 30;
    const big = await Sandbox.create({ ...ctx.conn, template: 'busybox', timeoutMs: 3600_000 });
    extra.push(big);
    await big.commands.run('mkdir -p /data && head -c 104857600 /dev/urandom > /data/big.bin && echo ok > /data/small');
    const base = await big.snapshot({ name: `bench-fork-${process.pid}` });
    const upper = path.join(ctx.daemon.dataDir, 'sandboxes', big.id, 'disk', 'upper');
    const cpDest = path.join(ctx.daemon.dataDir, `bench-cp-${process.pid}`);
    const snaps = await interleave(nSnap, [
      {
        name: 'snapshot (sdk, 100 MB changed)',
        run: async () => {
          const t0 = now();
          const s = await big.snapshot();
          const ms = now() - t0;
          await Snapshot.delete(s.id, ctx.conn);
          return ms;
        },
      },
      {
        name: 'cp -a (same upper dir)',
        run: async () => {
          const t0 = now();
          await execFileP('cp', ['-a', '--no-dereference', '--preserve=all', '-T', upper, cpDest]);
          const ms = now() - t0;
          fs.rmSync(cpDest, { recursive: true, force: true });
          return ms;
        },
      },
    ], errors);
    const forks = await interleave(nFork, [
      {
        name: 'fork (file, sdk)',
        run: async () => {
          const t0 = now();
          const f = await Sandbox.create({ ...ctx.conn, snapshot: base.id, timeoutMs: 600_000 });
          const ms = now() - t0;
          const r = await f.commands.run('cat /data/small');
          await f.kill();
          if (r.stdout !== 'ok\n') throw new Error(`a fork read ${JSON.stringify(r.stdout)} from the snapshot`);
          return ms;
        },
      },
      {
        name: 'create (sdk, busybox)',
        run: async () => {
          const t0 = now();
          const f = await Sandbox.create({ ...ctx.conn, template: 'busybox', timeoutMs: 600_000 });
          const ms = now() - t0;
          await f.kill();
          return ms;
        },
      },
    ], errors);
    const snapRows = [
      row('snapshot (sdk, 100 MB changed)', 'capsule', 'ms', snaps.get('snapshot (sdk, 100 MB changed)')!, { vs: 'cp -a (same upper dir)' }),
      row('cp -a (same upper dir)', 'baseline', 'ms', snaps.get('cp -a (same upper dir)')!),
      row('fork (file, sdk)', 'capsule', 'ms', forks.get('fork (file, sdk)')!, {
        vs: 'create (sdk, busybox)',
        target: { value: 150, better: 'lower', label: '≤ 150 ms (100 MB changed)', on: 'p50' },
      }),
      row('create (sdk, busybox)', 'baseline', 'ms', forks.get('create (sdk, busybox)')!),
    ];

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
      ...snapRows,
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
        'snapshot: a sandbox that wrote 100 MB (random) is frozen, its upper dir copied into a layer draft with `cp -a`, thawed, and the layer committed (size measured, renamed in); the baseline is `cp -a` of the same upper dir in the same run. Each sample deletes its snapshot untimed.',
        'fork (file): `Sandbox.create({ snapshot })` of a snapshot holding those 100 MB, until the agent answers: the snapshot is one more overlay lower dir, nothing is copied. Baseline: a cold create from the template (no pool) in the same run; `crun run -d` above is the runtime alone.',
      ],
      errors,
    };
  } finally {
    await sbx.kill().catch(() => undefined);
    await busy.kill().catch(() => undefined);
    for (const s of extra) await s.kill().catch(() => undefined);
    for (const s of await Snapshot.list(ctx.conn).catch(() => [])) await Snapshot.delete(s.id, ctx.conn).catch(() => undefined);
    await ctx.crun.delete(cid).catch(() => undefined);
  }
};
