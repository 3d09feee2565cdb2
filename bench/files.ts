/**
 * Scenario 4 — write then read back a 100 MB file (20 MB in quick mode)
 * through the SDK, in MB/s (1 MB = 10^6 bytes). Baselines: the same bytes
 * through `crun exec` pipes (`cat > f`, `cat f`) and the host-filesystem
 * floor (write + read of a file next to the daemon's data).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Sandbox } from '../src/sdk/index.js';
import { interleave, linkRatios, row, type Scenario } from './context.js';
import { now } from './stats.js';

export const files: Scenario = async (ctx) => {
  const errors: string[] = [];
  const mb = ctx.quick ? 20 : 100;
  const size = mb * 1_000_000;
  const n = ctx.quick ? 2 : 5;
  const data = crypto.randomBytes(size);
  const digest = crypto.createHash('sha256').update(data).digest('hex');
  const check = (what: string, got: Uint8Array) => {
    if (got.byteLength !== size) throw new Error(`${what}: read back ${got.byteLength} bytes, wrote ${size}`);
    if (crypto.createHash('sha256').update(got).digest('hex') !== digest) throw new Error(`${what}: content differs`);
  };
  const rate = (ms: number) => mb / (ms / 1000);
  const sbx = await Sandbox.create({ ...ctx.conn, template: 'busybox' });
  const cid = await ctx.crun.start(0);
  const hostFile = path.join(ctx.daemon.dataDir, '..', 'bench-file.bin');
  try {
    const w = new Map<string, number[]>([
      ['sdk write', []],
      ['sdk read', []],
      ['crun exec write', []],
      ['crun exec read', []],
      ['host fs write', []],
      ['host fs read', []],
    ]);
    const got = await interleave(n, [
      {
        name: 'sdk',
        run: async (i) => {
          const p = `/tmp/bench-${i}.bin`;
          let t0 = now();
          const res = (await sbx.files.write(p, data)).size;
          w.get('sdk write')!.push(rate(now() - t0));
          if (res !== size) throw new Error(`write reported ${res} bytes`);
          t0 = now();
          const back = await sbx.files.read(p, { format: 'bytes' });
          w.get('sdk read')!.push(rate(now() - t0));
          check('sdk', back);
          await sbx.files.remove(p);
          return 0;
        },
      },
      {
        name: 'crun',
        run: async (i) => {
          const p = `/tmp/bench-${i}.bin`;
          let t0 = now();
          await ctx.crun.exec(cid, ['sh', '-c', `cat > ${p}`], { stdin: data });
          w.get('crun exec write')!.push(rate(now() - t0));
          const chunks: Buffer[] = [];
          t0 = now();
          await ctx.crun.exec(cid, ['cat', p], { stdoutBytes: chunks });
          w.get('crun exec read')!.push(rate(now() - t0));
          check('crun exec', Buffer.concat(chunks));
          await ctx.crun.exec(cid, ['rm', '-f', p]);
          return 0;
        },
      },
      {
        name: 'host',
        run: async () => {
          let t0 = now();
          await fs.promises.writeFile(hostFile, data);
          w.get('host fs write')!.push(rate(now() - t0));
          t0 = now();
          const back = await fs.promises.readFile(hostFile);
          w.get('host fs read')!.push(rate(now() - t0));
          check('host', back);
          await fs.promises.rm(hostFile, { force: true });
          return 0;
        },
      },
    ], errors);
    void got;
    const target = { value: 200, better: 'higher' as const, label: '≥ 200 MB/s', on: 'p50' as const };
    const rows = [
      row('sdk write', 'capsule', 'MB/s', w.get('sdk write')!, { vs: 'crun exec write', target }),
      row('sdk read', 'capsule', 'MB/s', w.get('sdk read')!, { vs: 'crun exec read', target }),
      row('crun exec write', 'baseline', 'MB/s', w.get('crun exec write')!, { vs: 'host fs write' }),
      row('crun exec read', 'baseline', 'MB/s', w.get('crun exec read')!, { vs: 'host fs read' }),
      row('host fs write', 'floor', 'MB/s', w.get('host fs write')!),
      row('host fs read', 'floor', 'MB/s', w.get('host fs read')!),
    ];
    linkRatios(rows);
    return {
      name: 'files',
      title: `File write + read of ${mb} MB (MB/s; higher is better)`,
      rows,
      notes: [
        `Payload: ${mb} MB of random bytes from memory, sha256-checked on read-back. Percentiles of a rate: p95/p99 are the higher rates; compare p50.`,
        'Write = PUT with an in-memory Uint8Array body; read = files.read({format:"bytes"}).',
      ],
      errors,
    };
  } finally {
    await sbx.kill().catch(() => undefined);
    await ctx.crun.delete(cid).catch(() => undefined);
    fs.rmSync(hostFile, { force: true });
  }
};
