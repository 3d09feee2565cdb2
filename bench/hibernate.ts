/**
 * Scenario — hibernate: memory snapshots (ADR 0018). A Python process holding
 * 32 MiB of random bytes in a sandbox of a second daemon run with runc is
 * hibernated (`pause({ memory: 'disk' })`: CRIU dump, memory freed) and
 * restored (`resume`), next to raw `runc checkpoint` / `runc restore` of a
 * plain runc container running the same Python program on the same template
 * layers (no agent, no disk image, no daemon), interleaved in the same run.
 *
 * Skipped (with a note) when CRIU 4 is missing (`capsule doctor --fix`).
 */
import fs from 'node:fs';
import path from 'node:path';
import { Sandbox, Snapshot } from '../src/sdk/index.js';
import { buildOciSpec, SANDBOX_CAPABILITIES } from '../src/runtime/bundle.js';
import { checkCriu, criuEnv } from '../src/runtime/criu.js';
import { loadDefaultSeccomp } from '../src/runtime/seccomp.js';
import { interleave, linkRatios, row, type Scenario } from './context.js';
import { startDaemon, type BenchDaemon } from './daemon.js';
import { run, runOk } from './proc.js';
import { now } from './stats.js';

const TEMPLATE_CACHE = process.env.CAPSULE_TEMPLATE_CACHE ?? '/var/cache/capsule-test';

/** 32 MiB of random bytes and a counter, held in memory; writes the counter (and nothing else) to a file. */
const PY = [
  'import os, time',
  'blob = bytearray(os.urandom(32 << 20))',
  'n = 0',
  'while True:',
  '    n += 1',
  '    open("/tmp/state.new", "w").write(str(n))',
  '    os.rename("/tmp/state.new", "/tmp/state")',
  '    time.sleep(0.1)',
].join('\n');

const sh = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;

/** A plain runc container on the sandbox's own template layers, running PY: the raw checkpoint/restore baseline. */
class RuncCheckpointBaseline {
  private readonly dir: string;
  private readonly state: string;
  private readonly rootfs: string;
  private readonly bundle: string;
  readonly images: string;
  private mounted = false;
  private readonly id = `bench-criu-${process.pid}`;
  private criu = '';

  constructor(workDir: string, private readonly lowers: string[], private readonly agentBinary: string) {
    this.dir = path.join(workDir, 'runc-criu');
    this.state = path.join(this.dir, 'state');
    this.rootfs = path.join(this.dir, 'rootfs');
    this.bundle = path.join(this.dir, 'bundle');
    this.images = path.join(this.dir, 'images');
  }

  async setup(criu: string): Promise<void> {
    this.criu = criu;
    for (const d of ['upper', 'work', 'rootfs', 'state', 'bundle']) fs.mkdirSync(path.join(this.dir, d), { recursive: true, mode: 0o711 });
    for (const d of ['upper', 'work']) fs.chownSync(path.join(this.dir, d), 100000, 100000);
    fs.chmodSync(path.join(this.dir, 'upper'), 0o755);
    await runOk('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${this.lowers.join(':')},upperdir=${path.join(this.dir, 'upper')},workdir=${path.join(this.dir, 'work')}`, this.rootfs]);
    this.mounted = true;
    const spec = buildOciSpec({
      id: this.id,
      rootfs: this.rootfs,
      agentBinary: this.agentBinary,
      resources: { cpus: 1, memoryMb: 512, pids: 256 },
      idMapBase: 100000,
      idMapSize: 65536,
      seccomp: loadDefaultSeccomp(SANDBOX_CAPABILITIES),
      runtime: 'runc',
      swapAccounting: fs.existsSync('/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes'),
    });
    // Its own /dev/null for stdio (CRIU cannot dump the host's), as the agent does with --null-stdio.
    spec.process.args = ['/bin/sh', '-c', `exec python3 -c ${sh(PY)} </dev/null >/dev/null 2>&1`];
    spec.linux.cgroupsPath = `/capsule-bench/${this.id}`;
    fs.writeFileSync(path.join(this.bundle, 'config.json'), JSON.stringify(spec), { mode: 0o600 });
    const r = await run('runc', ['--root', this.state, 'run', '--detach', '--bundle', this.bundle, this.id], { capture: true });
    if (r.code !== 0) throw new Error(`runc run -d: ${r.stderr.trim().slice(0, 400)}`);
  }

  private freshImages(): void {
    fs.rmSync(this.images, { recursive: true, force: true });
    fs.mkdirSync(this.images, { mode: 0o755 });
    fs.chownSync(this.images, 100000, 100000);
    fs.chmodSync(this.images, 0o755);
  }

  private runc(args: string[]) {
    const env = Object.entries(criuEnv()).map(([k, v]) => `${k}=${v}`);
    return runOk('/usr/bin/env', [...env, 'runc', '--root', this.state, '--criu', this.criu, ...args], { timeoutMs: 120_000 });
  }

  async checkpoint(): Promise<number> {
    this.freshImages();
    const t0 = now();
    await this.runc(['checkpoint', '--image-path', this.images, this.id]);
    return now() - t0;
  }

  async restore(): Promise<number> {
    const t0 = now();
    await this.runc(['restore', '--detach', '--image-path', this.images, '--bundle', this.bundle, this.id]);
    return now() - t0;
  }

  async cleanup(): Promise<void> {
    await run('runc', ['--root', this.state, 'kill', this.id, 'KILL']);
    await new Promise((r) => setTimeout(r, 200));
    await run('runc', ['--root', this.state, 'delete', '--force', this.id]);
    if (this.mounted) await run('umount', [this.rootfs]);
    this.mounted = false;
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The sandbox's template layers, top first (capsule-mount's `lower`, `lower1`, … links). */
function layersOf(sandboxDir: string): string[] {
  const out: string[] = [];
  for (let i = 0; ; i++) {
    const link = path.join(sandboxDir, i === 0 ? 'lower' : `lower${i}`);
    if (!fs.existsSync(link)) break;
    out.push(fs.realpathSync(link));
  }
  return out;
}

export const hibernate: Scenario = async (ctx) => {
  const errors: string[] = [];
  const notes: string[] = [];
  const criu = await checkCriu();
  if (!criu.ok || !criu.bin) {
    notes.push(`skipped: ${criu.reason}`);
    return { name: 'hibernate', title: 'Hibernate and restore (memory snapshots)', rows: [], notes, errors };
  }
  const template = fs.existsSync(path.join(TEMPLATE_CACHE, 'python-rootfs.tar')) ? 'python' : null;
  if (!template) {
    notes.push(`skipped: the python template is not cached in ${TEMPLATE_CACHE} (npm test builds it once)`);
    return { name: 'hibernate', title: 'Hibernate and restore (memory snapshots)', rows: [], notes, errors };
  }
  const n = ctx.quick ? 4 : 20;
  const dataDir = path.join(path.dirname(ctx.daemon.dataDir), `runc-data-${process.pid}`);
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o755 });
  let d: BenchDaemon | null = null;
  let raw: RuncCheckpointBaseline | null = null;
  try {
    ctx.say('hibernate: starting a daemon with CAPSULE_RUNTIME=runc');
    d = await startDaemon(dataDir, { env: { CAPSULE_RUNTIME: 'runc' } });
    const conn = { apiUrl: d.url, ...(d.apiKey ? { apiKey: d.apiKey } : {}) };
    const sbx = await Sandbox.create({ ...conn, template, timeoutMs: 3600_000 });
    await sbx.commands.run(`python3 -c ${sh(PY)}`, { background: true });
    const stateFile = path.join(dataDir, 'sandboxes', sbx.id, 'rootfs', 'tmp', 'state');
    for (let i = 0; i < 200 && !fs.existsSync(stateFile); i++) await new Promise((r) => setTimeout(r, 50));
    const memBefore = Number(fs.readFileSync(`/sys/fs/cgroup/memory/capsule/${sbx.id}/memory.usage_in_bytes`, 'utf8'));
    raw = new RuncCheckpointBaseline(path.dirname(ctx.daemon.dataDir), layersOf(path.join(dataDir, 'sandboxes', sbx.id)), path.join(dataDir, 'bin', 'capsule-agent'));
    await raw.setup(criu.bin);
    await new Promise((r) => setTimeout(r, 1500)); // the raw one fills its 32 MiB
    const r0 = raw;
    let imageBytes = 0;
    const samples = await interleave(n, [
      { name: 'hibernate (sdk, 32 MiB)', run: async () => { const t0 = now(); await sbx.pause({ memory: 'disk' }); const ms = now() - t0; imageBytes = dirBytes(path.join(dataDir, 'sandboxes', sbx.id, 'checkpoint')); await sbx.resume(); return ms; } },
      { name: 'restore (sdk, 32 MiB)', run: async () => { await sbx.pause({ memory: 'disk' }); const t0 = now(); await sbx.resume(); return now() - t0; } },
      { name: 'runc checkpoint', run: async () => { const ms = await r0.checkpoint(); await r0.restore(); return ms; } },
      { name: 'runc restore', run: async () => { await r0.checkpoint(); return r0.restore(); } },
    ], errors);
    // Fork with memory: one fork per sample (checkpoint --leave-running + files copy, a create from the snapshot,
    // a restore into it), next to a cold create of the same template (what a fork without memory costs at least).
    const nFork = ctx.quick ? 2 : 8;
    const forks = await interleave(nFork, [
      {
        name: 'fork with memory (sdk, 1 fork)',
        run: async () => {
          const t0 = now();
          const [f] = await sbx.fork({ count: 1, memory: true });
          const ms = now() - t0;
          await f!.kill();
          return ms;
        },
      },
      {
        name: 'create (sdk, python)',
        run: async () => {
          const t0 = now();
          const f = await Sandbox.create({ ...conn, template, timeoutMs: 600_000 });
          const ms = now() - t0;
          await f.kill();
          return ms;
        },
      },
    ], errors);
    for (const s of await Snapshot.list(conn).catch(() => [])) await Snapshot.delete(s.id, conn).catch(() => undefined);
    const check = await sbx.commands.run('cat /tmp/state');
    if (!(Number(check.stdout) > 0)) errors.push(`after ${n} hibernate/restore pairs the sandbox answered ${JSON.stringify(check.stdout)}`);
    const rows = [
      row('hibernate (sdk, 32 MiB)', 'capsule', 'ms', samples.get('hibernate (sdk, 32 MiB)')!, { vs: 'runc checkpoint' }),
      row('restore (sdk, 32 MiB)', 'capsule', 'ms', samples.get('restore (sdk, 32 MiB)')!, { vs: 'runc restore' }),
      row('runc checkpoint', 'baseline', 'ms', samples.get('runc checkpoint')!),
      row('runc restore', 'baseline', 'ms', samples.get('runc restore')!),
      row('fork with memory (sdk, 1 fork)', 'capsule', 'ms', forks.get('fork with memory (sdk, 1 fork)')!, { vs: 'create (sdk, python)' }),
      row('create (sdk, python)', 'baseline', 'ms', forks.get('create (sdk, python)')!),
    ];
    linkRatios(rows);
    notes.push(
      `A Python process holding 32 MiB of random bytes (sandbox memory cgroup ${(memBefore / 2 ** 20).toFixed(1)} MiB before; none while hibernated: its cgroup is gone), image ${(imageBytes / 2 ** 20).toFixed(1)} MiB. Daemon run with CAPSULE_RUNTIME=runc and CRIU ${criu.version} (CRIU_FAULT=130).`,
      'hibernate: SDK → HTTP → state machine → close the agent connection → `runc checkpoint` (CRIU dump, container ends) → unmount overlay and disk (fsync), remove cgroups → HTTP response. restore: mount disk and overlay (new loop device) → `runc restore -d` → agent socket answers → images deleted → daemon reconnects and re-attaches the process.',
      'fork with memory: `sandbox.fork({ count: 1, memory: true })` of the same sandbox, until the fork runs the restored process: freeze, `runc checkpoint --leave-running` and a copy of its writable layer into a snapshot, thaw; a create from that snapshot; its container replaced by `runc restore` of the checkpoint; hostname set; agent reconnected. Baseline: a cold create of the python template in the same run (no pool). Each sample kills its fork untimed.',
      'Baselines: `runc checkpoint` / `runc restore -d` of a plain runc container running the same Python program on the same template layers (same userns, seccomp and cgroup spec; no agent, disk image or daemon), interleaved with Capsule\'s samples.',
    );
    return { name: 'hibernate', title: 'Hibernate and restore (memory snapshots, 32 MiB of state)', rows, notes, errors };
  } finally {
    await raw?.cleanup().catch((e: unknown) => errors.push(`raw runc cleanup: ${String(e)}`));
    await d?.stop().catch(() => undefined);
    // Never through a mount a failed kill left behind.
    if (!fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(dataDir)) fs.rmSync(dataDir, { recursive: true, force: true });
    else errors.push(`left ${dataDir} in place: something is still mounted under it`);
  }
};

function dirBytes(dir: string): number {
  let sum = 0;
  try {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) if (e.isFile()) sum += fs.statSync(path.join(dir, e.name)).size;
  } catch {
    /* gone */
  }
  return sum;
}
