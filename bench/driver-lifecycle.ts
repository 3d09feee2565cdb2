/**
 * Driver-level create and destroy latency, without HTTP or the agent protocol:
 * OciRuntimeDriver.create() then destroy() on a busybox rootfs, N times, and
 * p50/p95 of each. For measuring changes to the runtime layer itself (mounts,
 * bundle, crun flags), where the full bench's noise would hide them.
 *
 *   node dist/bench/driver-lifecycle.js [N] [--json]     (root, crun, /bin/busybox)
 *
 * --json prints the raw samples; alternate runs of two builds with it to
 * compare them on a busy machine (drift then hits both alike).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { dataPaths, type ResourceLimits } from '../src/config/index.js';
import { OciRuntimeDriver } from '../src/runtime/driver.js';
import { ensureHostReady } from '../src/runtime/doctor.js';
import { REPO_ROOT } from '../test/helpers/serve.js';

const ID_BASE = 100000;

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((s.length - 1) * p))] ?? NaN;
}

async function main(): Promise<void> {
  const n = Number(process.argv[2] ?? 40);
  await ensureHostReady('crun');
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-drvbench-'));
  fs.chmodSync(root, 0o755);
  const paths = dataPaths(path.join(root, 'data'));
  const rootfs = paths.templateRootfs('busybox');
  for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev', 'root', '.capsule']) fs.mkdirSync(path.join(rootfs, d), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(rootfs, 'bin', 'busybox'));
  fs.chmodSync(path.join(rootfs, 'bin', 'busybox'), 0o755);
  fs.symlinkSync('busybox', path.join(rootfs, 'bin', 'sh'));
  execFileSync('chown', ['-R', '-h', `${ID_BASE}:${ID_BASE}`, rootfs]);
  fs.mkdirSync(paths.bin, { recursive: true, mode: 0o755 });
  const agentBinary = path.join(paths.bin, 'capsule-agent');
  fs.copyFileSync(path.join(REPO_ROOT, 'dist', 'agent', 'capsule-agent'), agentBinary);
  fs.chmodSync(agentBinary, 0o755);

  const driver = new OciRuntimeDriver({ runtime: 'crun', paths, idMapBase: ID_BASE, idMapSize: 65536, agentBinary });
  // A plain object, not a literal typed ResourceLimits: the same script runs before and after diskMb existed.
  const resources = { cpus: 1, memoryMb: 256, pids: 64, diskMb: 2048 };
  const create: number[] = [];
  const destroy: number[] = [];
  try {
    for (let i = 0; i < n + 3; i++) {
      const id = `bench-${i}`;
      let t0 = performance.now();
      await driver.create({ id, layers: [{ path: rootfs }], writable: { diskMb: (resources as ResourceLimits).diskMb }, resources: resources as ResourceLimits, network: { mode: 'none' } });
      const c = performance.now() - t0;
      t0 = performance.now();
      await driver.destroy(id);
      const d = performance.now() - t0;
      if (i >= 3) {
        create.push(c);
        destroy.push(d); // the first three warm caches (seccomp profile, crun binary)
      }
    }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  if (process.argv.includes('--json')) {
    // Raw samples, for comparing two builds run alternately (see the header).
    console.log(JSON.stringify({ create, destroy }));
    return;
  }
  const f = (x: number) => x.toFixed(1).padStart(6);
  console.log(`driver lifecycle, n=${n} (ms)   p50    p95`);
  console.log(`create                       ${f(pct(create, 0.5))} ${f(pct(create, 0.95))}`);
  console.log(`destroy                      ${f(pct(destroy, 0.5))} ${f(pct(destroy, 0.95))}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
