/**
 * Scenario gvisor — the gVisor backend next to raw runsc on the same bundle,
 * and next to the container backend and raw crun, all in the same run:
 *
 *  - create → first command (`Sandbox.create({isolation})` + `echo hi`);
 *  - exec round trip of `true` through the SDK, straight to the agent's socket,
 *    and `runsc exec`;
 *  - host memory of an idle gVisor sandbox (its cgroup's usage).
 *
 * Skipped (with a note) when runsc is not installed.
 */
import path from 'node:path';
import { connectAgent } from '../src/agent/client.js';
import { Sandbox } from '../src/sdk/index.js';
import { hasBinary } from './baselines.js';
import { idleMemoryMiB, checkTrue as check, timed, transferRows } from './backend-rows.js';
import { interleave, linkRatios, row, type Scenario } from './context.js';
import { RunscBaseline } from './runsc-baseline.js';
import { now } from './stats.js';

export const gvisor: Scenario = async (ctx) => {
  const errors: string[] = [];
  const notes: string[] = [];
  if (!hasBinary('runsc')) {
    notes.push('skipped: runsc is not installed (apt-get install runsc)');
    return { name: 'gvisor', title: 'gVisor backend', rows: [], notes, errors };
  }
  const runsc = new RunscBaseline({
    workDir: path.dirname(ctx.daemon.dataDir),
    templateRootfs: ctx.templateRootfs,
    agentBinary: path.join(ctx.daemon.dataDir, 'bin', 'capsule-agent'),
  });
  try {
    await runsc.setup();
    const first = (isolation: 'gvisor' | 'container') => async () => {
      const t0 = now();
      const s = await Sandbox.create({ ...ctx.conn, template: 'busybox', isolation });
      let ms: number;
      try {
        const r = await s.commands.run('echo hi');
        ms = now() - t0;
        if (r.stdout !== 'hi\n') throw new Error(`echo hi printed ${JSON.stringify(r.stdout)}`);
      } finally {
        await s.kill();
      }
      return ms;
    };
    const n = ctx.quick ? 3 : 12;
    const got = await interleave(
      n,
      [
        { name: 'ttfc.gvisor', run: first('gvisor') },
        {
          name: 'runsc run -d + exec echo',
          run: async () => {
            const t0 = now();
            const id = await runsc.start();
            let ms: number;
            try {
              const out = await runsc.exec(id, ['echo', 'hi']);
              ms = now() - t0;
              if (out !== 'hi\n') throw new Error(`runsc exec echo printed ${JSON.stringify(out)}`);
            } finally {
              await runsc.delete(id);
            }
            return ms;
          },
        },
        { name: 'ttfc.container', run: first('container') },
        {
          name: 'crun run -d + exec echo',
          run: async () => {
            const t0 = now();
            const id = await ctx.crun.start(0);
            let ms: number;
            try {
              await ctx.crun.exec(id, ['echo', 'hi'], { capture: true });
              ms = now() - t0;
            } finally {
              await ctx.crun.delete(id);
            }
            return ms;
          },
        },
      ],
      errors,
    );

    // Exec round trips in one long-lived sandbox of each kind and one raw runsc container.
    const gv = await Sandbox.create({ ...ctx.conn, template: 'busybox', isolation: 'gvisor' });
    const ct = await Sandbox.create({ ...ctx.conn, template: 'busybox', isolation: 'container' });
    const rid = await runsc.start();
    // The gVisor driver's socket layout (config paths.gvisorSocketDir).
    const agent = await connectAgent(path.join(ctx.daemon.dataDir, 'gvisor', 'sock', gv.id, 'agent.sock'));
    try {
      for (let i = 0; i < 3; i++) {
        await gv.commands.run(['true']);
        await ct.commands.run(['true']);
        await runsc.exec(rid, ['true']);
      }
      const m = ctx.quick ? 20 : 150;
      const ex = await interleave(
        m,
        [
          { name: 'exec true (sdk, gvisor)', run: async () => timed(async () => check(await gv.commands.run(['true']))) },
          {
            name: 'agent exec true (gvisor socket)',
            run: async () =>
              timed(async () => {
                const p = await agent.exec({ argv: ['true'], env: {}, stdin: false });
                check(await p.exited);
              }),
          },
          { name: 'exec true (sdk, container)', run: async () => timed(async () => check(await ct.commands.run(['true']))) },
        ],
        errors,
      );
      const heavy = await interleave(ctx.quick ? 5 : 40, [{ name: 'runsc exec true', run: async () => timed(() => runsc.exec(rid, ['true'])) }], errors);
      for (const [k, v] of heavy) ex.set(k, v);
      // Host memory of the idle gVisor sandbox: its cgroup's usage (gVisor's kernel, gofer and the guest).
      const idle = await idleMemoryMiB(gv.id);
      // A file written and read back through the SDK in each kind (MB/s, 1 MB = 10^6 bytes), interleaved.
      const mb = ctx.quick ? 20 : 100;
      const rows = [
        row('ttfc.gvisor', 'capsule', 'ms', got.get('ttfc.gvisor')!, { vs: 'runsc run -d + exec echo' }),
        row('runsc run -d + exec echo', 'baseline', 'ms', got.get('runsc run -d + exec echo')!, { vs: 'crun run -d + exec echo' }),
        row('ttfc.container', 'capsule', 'ms', got.get('ttfc.container')!, { vs: 'crun run -d + exec echo' }),
        row('crun run -d + exec echo', 'baseline', 'ms', got.get('crun run -d + exec echo')!),
        row('exec true (sdk, gvisor)', 'capsule', 'ms', ex.get('exec true (sdk, gvisor)')!, { vs: 'agent exec true (gvisor socket)' }),
        row('agent exec true (gvisor socket)', 'baseline', 'ms', ex.get('agent exec true (gvisor socket)')!, { vs: 'exec true (sdk, container)' }),
        row('exec true (sdk, container)', 'capsule', 'ms', ex.get('exec true (sdk, container)')!),
        row('runsc exec true', 'baseline', 'ms', ex.get('runsc exec true')!, { vs: 'exec true (sdk, gvisor)' }),
      ];
      rows.push(...(await transferRows('gvisor', gv, ct, mb, ctx.quick ? 2 : 5, errors)));
      if (idle.length > 0) rows.push(row('idle memory (gvisor, cgroup)', 'capsule', 'MiB', idle));
      linkRatios(rows);
      notes.push(
        'ttfc rows: create + `echo hi` through the SDK (teardown not timed), interleaved with raw `runsc run --detach` + `runsc exec echo hi` on the same bundle (buildGvisorSpec, sleep as init) and the container pair.',
        'exec rows: `true` in one long-lived sandbox of each kind; the agent row is a direct connection to the gVisor sandbox agent\'s socket (no HTTP); `runsc exec` forks runsc per call.',
        'ratios: ttfc.gvisor / raw runsc; raw runsc / raw crun; exec (sdk, gvisor) / the agent alone; the agent over gVisor / the container SDK exec; runsc exec / exec (sdk, gvisor).',
        `file rows: ${mb} MB written (PUT) and read back (files.read bytes) through the SDK in the same two sandboxes, interleaved; ratio: gVisor / container.`,
      );
      return { name: 'gvisor', title: 'gVisor backend next to raw runsc (same bundle) and the container backend', rows, notes, errors };
    } finally {
      agent.close();
      await gv.kill().catch(() => undefined);
      await ct.kill().catch(() => undefined);
      await runsc.delete(rid).catch(() => undefined);
    }
  } finally {
    const left = await runsc.cleanup();
    if (left.length > 0) errors.push(...left);
  }
};
