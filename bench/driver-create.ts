/**
 * Driver create time with the seccomp filter precompiled (annotation) or
 * compiled by crun on every create (plain linux.seccomp), and with no filter
 * at all as the floor. The variants run interleaved on one fixture, so load
 * from other work on the machine hits them alike. Needs root, crun, busybox.
 *
 *   node dist/bench/driver-create.js [--n 40]
 */
import { makeFixture, ID_BASE, ID_SIZE, skipReason, specFor } from '../test/integration/runtime/fixture.js';
import { OciRuntimeDriver, type OciRuntimeDriverOptions } from '../src/runtime/driver.js';
import { ensureHostReady } from '../src/runtime/doctor.js';
import { fmt, summarize } from './stats.js';

const nArg = process.argv.indexOf('--n');
const N = nArg > 0 ? Number(process.argv[nArg + 1]) : 40;
const WARMUP = 3;

const why = skipReason();
if (why) {
  console.error(`driver-create: cannot run: ${why}`);
  process.exit(1);
}
await ensureHostReady('crun');
const fx = makeFixture();
const variants: Record<string, Partial<OciRuntimeDriverOptions>> = {
  'plain linux.seccomp (crun compiles)': { precompileSeccomp: false },
  'precompiled (annotation)': {},
  'no seccomp (floor)': { seccomp: null },
};
const samples = new Map<string, number[]>();
try {
  const drivers = Object.entries(variants).map(
    ([name, o]) => [name, new OciRuntimeDriver({ runtime: 'crun', paths: fx.paths, idMapBase: ID_BASE, idMapSize: ID_SIZE, agentBinary: fx.agentBinary, ...o })] as const,
  );
  for (let i = 0; i < WARMUP + N; i++) {
    for (const [name, d] of drivers) {
      const id = `bench-${i}-${drivers.findIndex(([n]) => n === name)}`;
      const t0 = performance.now();
      await d.create(specFor(id, fx.templateRootfs, { cpus: 1, memoryMb: 128, pids: 64, diskMb: 256 }));
      const ms = performance.now() - t0;
      await d.destroy(id);
      if (i >= WARMUP) samples.set(name, [...(samples.get(name) ?? []), ms]);
    }
  }
} finally {
  fx.cleanup();
}
console.log(`driver create, ms (n=${N} each, interleaved, after ${WARMUP} warm-up rounds)`);
console.log('| variant | p50 | p95 | mean | min |\n|---|---|---|---|---|');
for (const [name, xs] of samples) {
  const s = summarize(xs);
  console.log(`| ${name} | ${fmt(s.p50)} | ${fmt(s.p95)} | ${fmt(s.mean)} | ${fmt(s.min)} |`);
}
