/**
 * What Capsule is compared against, on this host, in the same run:
 *
 *  - raw crun: `crun run -d` / `exec` / `delete -f` on a bundle equivalent to a
 *    sandbox's (same busybox rootfs behind an overlay, the same spec from
 *    buildOciSpec: userns, seccomp, cgroups, masks) but with `sleep` as init
 *    and a state dir (`--root`) and cgroup parent of its own;
 *  - bubblewrap: `bwrap --unshare-all --ro-bind <rootfs> / ... /bin/true`;
 *  - the floor: spawning /bin/true from Node.
 *
 * Everything made here is undone by `cleanup()`, which is safe to call twice
 * and after a partial setup.
 */
import fs from 'node:fs';
import path from 'node:path';
import { buildOciSpec, SANDBOX_CAPABILITIES } from '../src/runtime/bundle.js';
import { loadDefaultSeccomp } from '../src/runtime/seccomp.js';
import { run, runOk } from './proc.js';

export const CGROUP_PARENT = 'capsule-bench';
const CGROUP_ROOT = '/sys/fs/cgroup';

export interface CrunBaselineOptions {
  /** Directory owned by the bench (its files go below `<workDir>/crun`). */
  workDir: string;
  /** Template rootfs (uid-shifted), used as the overlay's lower layer. */
  templateRootfs: string;
  /** The installed agent binary (its dir is bind-mounted as in a sandbox). */
  agentBinary: string;
  idMapBase?: number;
  idMapSize?: number;
  /** Leave out linux.seccomp (for the phase analysis). */
  noSeccomp?: boolean;
}

export class CrunBaseline {
  readonly dir: string;
  readonly state: string;
  readonly rootfs: string;
  private mounted = false;
  private readonly bundles = new Map<number, string>();
  private readonly live = new Set<string>();
  private seq = 0;
  private seccomp: ReturnType<typeof loadDefaultSeccomp> | null | undefined;
  private readonly tag = `b${process.pid}`;

  constructor(private readonly opts: CrunBaselineOptions) {
    this.dir = path.join(opts.workDir, 'crun');
    this.state = path.join(this.dir, 'state');
    this.rootfs = path.join(this.dir, 'rootfs');
  }

  async setup(): Promise<void> {
    const owner = this.opts.idMapBase ?? 100000;
    for (const d of ['upper', 'work', 'rootfs', 'state', 'bundles']) fs.mkdirSync(path.join(this.dir, d), { recursive: true, mode: 0o711 });
    fs.chmodSync(path.join(this.dir, 'upper'), fs.statSync(this.opts.templateRootfs).mode & 0o7777);
    fs.chownSync(path.join(this.dir, 'upper'), owner, owner);
    fs.chownSync(path.join(this.dir, 'work'), owner, owner);
    const o = `lowerdir=${this.opts.templateRootfs},upperdir=${path.join(this.dir, 'upper')},workdir=${path.join(this.dir, 'work')}`;
    await runOk('mount', ['-t', 'overlay', 'overlay', '-o', o, this.rootfs]);
    this.mounted = true;
  }

  /** One bundle per slot (a slot = one container at a time), each with its own cgroup. */
  private bundleFor(slot: number): string {
    let b = this.bundles.get(slot);
    if (b) return b;
    b = path.join(this.dir, 'bundles', String(slot));
    fs.mkdirSync(b, { recursive: true, mode: 0o700 });
    const spec = buildOciSpec({
      id: `${this.tag}-${slot}`,
      rootfs: this.rootfs,
      agentBinary: this.opts.agentBinary,
      resources: { cpus: 1, memoryMb: 512, pids: 256 },
      idMapBase: this.opts.idMapBase ?? 100000,
      idMapSize: this.opts.idMapSize ?? 65536,
      seccomp: (this.seccomp ??= this.opts.noSeccomp ? null : loadDefaultSeccomp(SANDBOX_CAPABILITIES)),
      swapAccounting: fs.existsSync(path.join(CGROUP_ROOT, 'memory', 'memory.memsw.limit_in_bytes')),
    });
    spec.process.args = ['/bin/sleep', '1000000'];
    spec.linux.cgroupsPath = `/${CGROUP_PARENT}/${this.tag}-${slot}`;
    fs.writeFileSync(path.join(b, 'config.json'), JSON.stringify(spec), { mode: 0o600 });
    this.bundles.set(slot, b);
    return b;
  }

  private crun(args: string[]): string[] {
    return ['--root', this.state, ...args];
  }

  /** `crun run -d` (stdio ignored, never pipes). Returns the container id. */
  async start(slot: number): Promise<string> {
    const bundle = this.bundleFor(slot);
    const id = `${this.tag}-${slot}-${this.seq++}`;
    this.live.add(id);
    const r = await run('crun', this.crun(['run', '--detach', '--bundle', bundle, id]));
    if (r.code !== 0) {
      const again = await run('crun', this.crun(['run', '--detach', '--bundle', bundle, id]), { capture: true });
      throw new Error(`crun run -d failed (exit ${r.code}); a retry said: ${again.stderr.trim().slice(0, 400)}`);
    }
    return id;
  }

  /** Times `crun exec` failed in setns right after `run -d` and was retried (a crun race, not a Capsule failure). */
  execRetries = 0;

  /**
   * `crun exec <id> argv...`; with capture, stdout comes back. crun 1.8 sometimes fails
   * `setns(...): Operation not permitted` ("fail startup") for an exec issued right after
   * `run -d` returns; that is retried (up to twice, and counted in execRetries).
   */
  async exec(id: string, argv: string[], opts: { capture?: boolean; stdin?: Uint8Array; stdoutBytes?: Buffer[] } = {}): Promise<string> {
    for (let attempt = 0; ; attempt++) {
      const r = await run('crun', this.crun(['exec', id, ...argv]), { capture: true, ...opts });
      if (r.code === 0) return r.stdout;
      if (attempt < 2 && /fail startup|setns/.test(r.stderr)) {
        this.execRetries++;
        if (opts.stdoutBytes) opts.stdoutBytes.length = 0;
        continue;
      }
      throw new Error(`crun exec ${id} ${argv.join(' ')} exited ${r.code ?? r.signal}: ${r.stderr.trim().slice(0, 400)}`);
    }
  }

  async delete(id: string): Promise<void> {
    const r = await run('crun', this.crun(['delete', '--force', id]), { capture: true });
    if (r.code !== 0 && !/does not exist|not found/i.test(r.stderr)) throw new Error(`crun delete -f ${id}: ${r.stderr.trim().slice(0, 400)}`);
    this.live.delete(id);
  }

  /** `crun pause <id>` / `crun resume <id>` (the lifecycle scenario's raw baseline). */
  async freeze(id: string, verb: 'pause' | 'resume'): Promise<void> {
    const r = await run('crun', this.crun([verb, id]), { capture: true });
    if (r.code !== 0) throw new Error(`crun ${verb} ${id}: ${r.stderr.trim().slice(0, 400)}`);
  }

  /** Delete every container, unmount the overlay, remove cgroups and files. Never throws. */
  async cleanup(): Promise<string[]> {
    const problems: string[] = [];
    if (fs.existsSync(this.state)) {
      const l = await run('crun', this.crun(['list', '--quiet']), { capture: true }).catch(() => null);
      const ids = new Set([...this.live, ...(l?.stdout.split('\n').map((s) => s.trim()).filter(Boolean) ?? [])]);
      for (const id of ids) {
        const r = await run('crun', this.crun(['delete', '--force', id]), { capture: true }).catch((e: Error) => ({ code: 1, stderr: e.message }));
        if (r.code !== 0 && !/does not exist|not found/i.test(r.stderr)) problems.push(`crun delete ${id}: ${r.stderr.trim()}`);
      }
      this.live.clear();
    }
    if (this.mounted) {
      const u = await run('umount', [this.rootfs], { capture: true });
      if (u.code !== 0) {
        const lazy = await run('umount', ['-l', this.rootfs], { capture: true });
        if (lazy.code !== 0) problems.push(`umount ${this.rootfs}: ${u.stderr.trim()}`);
      }
      this.mounted = false;
    }
    problems.push(...removeBenchCgroups(this.tag));
    try {
      fs.rmSync(this.dir, { recursive: true, force: true });
    } catch (e) {
      problems.push(`rm ${this.dir}: ${(e as Error).message}`);
    }
    return problems;
  }
}

/** rmdir /sys/fs/cgroup/<ctrl>/capsule-bench/<tag>-* (and the parent when empty). */
export function removeBenchCgroups(tag: string): string[] {
  const problems: string[] = [];
  let ctrls: string[] = [];
  try {
    ctrls = fs.readdirSync(CGROUP_ROOT);
  } catch {
    return problems;
  }
  for (const c of ctrls) {
    const parent = path.join(CGROUP_ROOT, c, CGROUP_PARENT);
    if (!fs.existsSync(parent)) continue;
    for (const e of fs.readdirSync(parent)) {
      if (!e.startsWith(`${tag}-`)) continue;
      try {
        fs.rmdirSync(path.join(parent, e));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') problems.push(`rmdir ${path.join(parent, e)}: ${(err as Error).message}`);
      }
    }
    try {
      fs.rmdirSync(parent);
    } catch {
      // not empty (another bench run?) or gone
    }
  }
  return problems;
}

/** `bwrap --unshare-all --ro-bind <rootfs> / --proc /proc --dev /dev /bin/true`. */
export async function bwrapTrue(rootfs: string): Promise<void> {
  const r = await run('bwrap', ['--unshare-all', '--ro-bind', rootfs, '/', '--proc', '/proc', '--dev', '/dev', '/bin/true'], { capture: true });
  if (r.code !== 0) throw new Error(`bwrap exited ${r.code ?? r.signal}: ${r.stderr.trim().slice(0, 300)}`);
}

/** The floor: fork+exec of /bin/true from Node. */
export async function spawnTrue(): Promise<void> {
  const r = await run('/bin/true', []);
  if (r.code !== 0) throw new Error(`/bin/true exited ${r.code}`);
}

export function hasBinary(name: string): boolean {
  for (const d of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    try {
      fs.accessSync(path.join(d, name), fs.constants.X_OK);
      return true;
    } catch {
      // next
    }
  }
  return false;
}
