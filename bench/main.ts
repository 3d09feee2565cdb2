/**
 * `npm run bench` — Capsule's benchmark harness.
 *
 *   node dist/bench/main.js [--quick] [--out DIR] [--only NAME[,NAME]] [--debian]
 *
 * Starts its own daemon (temporary data dir, busybox template), measures the
 * scenarios through the TypeScript SDK over HTTP on 127.0.0.1 against
 * baselines measured in the same run (raw crun, bwrap, spawn), prints a
 * table and writes JSON, Markdown and an SVG plot to bench/results (or
 * --out). Timings never fail the run: it exits non-zero only when something
 * is broken (a scenario failed, or cleanup left things behind).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Sandbox } from '../src/sdk/index.js';
import { CrunBaseline, hasBinary } from './baselines.js';
import { FIRST_BUILD_TIMEOUT_MS, type BenchContext, type Scenario } from './context.js';
import { REPO_ROOT, startDaemon, type BenchDaemon } from './daemon.js';
import { code } from './code.js';
import { density } from './density.js';
import { e2b } from './e2b.js';
import { exec } from './exec.js';
import { files } from './files.js';
import { gvisor } from './gvisor.js';
import { microvm } from './microvm.js';
import { lifecycle } from './lifecycle.js';
import { hibernate } from './hibernate.js';
import { interactive } from './interactive.js';
import { network } from './network.js';
import { renderSvg } from './plot.js';
import { run } from './proc.js';
import { consoleTable, hostInfo, writeResults, type BenchReport } from './report.js';
import { now } from './stats.js';
import { sustained } from './sustained.js';
import { templates } from './templates.js';
import { ttfc } from './ttfc.js';
import type { BenchOptions, ScenarioResult } from './types.js';

export const SCENARIOS: ReadonlyArray<[string, Scenario]> = [
  ['ttfc', ttfc],
  ['exec', exec],
  ['sustained', sustained],
  // density before files: the file scenario leaves page-cache churn that skews MemAvailable.
  ['density', density],
  ['files', files],
  ['templates', templates],
  ['lifecycle', lifecycle],
  ['hibernate', hibernate],
  ['interactive', interactive],
  ['network', network],
  ['code', code],
  ['e2b', e2b],
  ['gvisor', gvisor],
  ['microvm', microvm],
];

const USAGE = `usage: node dist/bench/main.js [--quick] [--out DIR] [--only NAME[,NAME...]] [--debian]
  --quick    smoke version (< 1 minute): fewer iterations, 20 MB file, 20 idle sandboxes
  --out DIR  where results go (default: bench/results)
  --only     run only these scenarios: ${SCENARIOS.map(([n]) => n).join(', ')}
  --debian   also measure time to first command on the debian template (builds it if needed)`;

function parseArgs(argv: string[]): BenchOptions {
  const o: BenchOptions = { quick: false, outDir: path.join(REPO_ROOT, 'bench', 'results'), only: null, debian: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value\n${USAGE}`);
      return v;
    };
    if (a === '--quick') o.quick = true;
    else if (a === '--debian') o.debian = true;
    else if (a === '--out') o.outDir = path.resolve(value());
    else if (a.startsWith('--out=')) o.outDir = path.resolve(a.slice(6));
    else if (a === '--only' || a.startsWith('--only=')) {
      const names = (a === '--only' ? value() : a.slice(7)).split(',').map((s) => s.trim()).filter(Boolean);
      for (const n of names) if (!SCENARIOS.some(([k]) => k === n)) throw new Error(`unknown scenario ${n}\n${USAGE}`);
      o.only = [...(o.only ?? []), ...names];
    } else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument ${a}\n${USAGE}`);
  }
  return o;
}

function say(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}

async function main(): Promise<number> {
  const opts = parseArgs(process.argv.slice(2));
  const failures: string[] = [];
  if (process.getuid?.() !== 0) {
    say('must run as root (the daemon and the crun baseline need it)');
    return 2;
  }
  for (const b of ['crun', 'bwrap', 'mount']) {
    if (!hasBinary(b)) {
      say(`${b} not found on PATH (apt-get install crun bubblewrap)`);
      return 2;
    }
  }
  const startedAt = new Date().toISOString();
  const t0 = now();
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-bench-'));
  // The sandboxes' mapped root must traverse it to reach templates and the agent.
  fs.chmodSync(workDir, 0o711);
  const dataDir = path.join(workDir, 'data');
  let daemon: BenchDaemon | null = null;
  let crun: CrunBaseline | null = null;
  const cleanupProblems: string[] = [];
  let cleaned: Promise<void> | null = null;
  const cleanup = () =>
    (cleaned ??= (async () => {
      if (crun) cleanupProblems.push(...(await crun.cleanup()));
      if (daemon) await daemon.stop().catch((e: Error) => cleanupProblems.push(`daemon stop: ${e.message}`));
      const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(workDir));
      for (const m of mounts.sort().reverse()) {
        await run('umount', ['-l', m]);
        cleanupProblems.push(`left mounted (lazily unmounted now): ${m}`);
      }
      try {
        fs.rmSync(workDir, { recursive: true, force: true, maxRetries: 3 });
      } catch (e) {
        cleanupProblems.push(`rm ${workDir}: ${(e as Error).message}`);
      }
    })());
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    say(`${sig}: cleaning up...`);
    void cleanup().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const results: ScenarioResult[] = [];
  let crunVersion = 'crun ?';
  try {
    const v = await run('crun', ['--version'], { capture: true });
    crunVersion = v.stdout.split('\n')[0]?.trim() ?? crunVersion;
    say(`starting daemon (data dir ${dataDir})`);
    // The microvm scenario measures QEMU under software emulation where the host has no hardware
    // virtualization: a test-only setting, allowed for the bench's own daemon (ADR 0017).
    daemon = await startDaemon(dataDir, { env: { CAPSULE_MICROVM_ALLOW_TCG: '1' } });
    const conn = { apiUrl: daemon.url, ...(daemon.apiKey ? { apiKey: daemon.apiKey } : {}) };
    // Build the template(s) and warm the code paths; none of this is timed.
    for (const template of opts.debian ? ['busybox', 'debian'] : ['busybox']) {
      say(`preparing template ${template}`);
      const s = await Sandbox.create({ ...conn, template, requestTimeoutMs: FIRST_BUILD_TIMEOUT_MS });
      await s.commands.run('true');
      await s.kill();
    }
    const templateRootfs = path.join(dataDir, 'templates', 'busybox', 'rootfs');
    crun = new CrunBaseline({ workDir, templateRootfs, agentBinary: path.join(dataDir, 'bin', 'capsule-agent') });
    await crun.setup();
    const ctx: BenchContext = { daemon, conn, crun, templateRootfs, quick: opts.quick, debian: opts.debian, say };
    for (const [name, scenario] of SCENARIOS) {
      if (interrupted) break;
      if (opts.only && !opts.only.includes(name)) continue;
      say(`scenario ${name}`);
      const s0 = now();
      try {
        const retriesBefore = ctx.crun.execRetries;
        const r = await scenario(ctx);
        const retries = ctx.crun.execRetries - retriesBefore;
        if (retries > 0) r.notes.push(`raw crun baseline: ${retries} \`crun exec\` call(s) failed with "setns: Operation not permitted" right after \`run -d\` and were retried (their time counts).`);
        results.push({ ...r, wallMs: now() - s0 });
        if (r.errors.length) failures.push(`${name}: ${r.errors.length} failed operation(s), first: ${r.errors[0]}`);
      } catch (e) {
        const msg = (e as Error).stack ?? String(e);
        failures.push(`${name}: ${msg.split('\n').slice(0, 3).join(' ')}`);
        results.push({ name, title: `${name} (failed)`, rows: [], notes: [], errors: [String((e as Error).message)], wallMs: now() - s0 });
        say(`scenario ${name} FAILED: ${(e as Error).message}`);
        const death = daemon.death();
        if (death) say(`the bench daemon ${death}`);
      }
    }
  } catch (e) {
    failures.push(`setup: ${(e as Error).message}`);
    say(`FAILED: ${(e as Error).message}`);
    if (daemon) say(`daemon log tail:\n${daemon.log().slice(-3000)}`);
  } finally {
    say('cleaning up');
    await cleanup();
  }
  if (interrupted) return 130;

  const rep: BenchReport = {
    startedAt,
    finishedAt: new Date().toISOString(),
    wallSeconds: (now() - t0) / 1000,
    options: { quick: opts.quick, only: opts.only, debian: opts.debian },
    host: hostInfo(crunVersion),
    scenarios: results,
    failures,
    cleanupProblems,
  };
  const svg = renderSvg(results, `Capsule bench ${startedAt}${opts.quick ? ' (quick)' : ''} — CDFs, Capsule solid, baselines dashed`);
  const out = writeResults(opts.outDir, rep, svg);
  console.log(consoleTable(results));
  say(`wrote ${out.json}, ${out.md}, ${out.latest}, ${out.svg} (${rep.wallSeconds.toFixed(0)} s)`);
  for (const f of failures) say(`FAILURE ${f}`);
  for (const c of cleanupProblems) say(`CLEANUP ${c}`);
  return failures.length || cleanupProblems.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    say(`fatal: ${(e as Error).message ?? String(e)}`);
    process.exit(2);
  },
);
