/**
 * Raw runsc, for the gvisor scenario: `runsc run --detach` / `exec` / `delete`
 * with the flags and the bundle of a gVisor sandbox (buildGvisorSpec: userns,
 * seccomp inside gVisor, cgroups, ptrace platform, no network) over an overlay
 * of the same busybox template, with `sleep` as init instead of the agent and
 * a state dir and cgroup parent of its own. `cleanup()` undoes everything and
 * is safe to call twice and after a partial setup.
 */
import fs from 'node:fs';
import path from 'node:path';
import { SANDBOX_CAPABILITIES } from '../src/runtime/bundle.js';
import { buildGvisorSpec } from '../src/runtime/gvisor/bundle.js';
import { loadDefaultSeccomp } from '../src/runtime/seccomp.js';
import { CGROUP_PARENT, removeBenchCgroups } from './baselines.js';
import { run, runOk } from './proc.js';

/** What the gVisor driver passes to every `runsc run` (src/runtime/gvisor/driver.ts RUN_FLAGS). */
const RUN_FLAGS = ['--platform=ptrace', '--network=none', '--host-uds=create', '--oci-seccomp'];

export class RunscBaseline {
  readonly dir: string;
  private readonly state: string;
  private readonly rootfs: string;
  private mounted = false;
  private readonly live = new Set<string>();
  private seq = 0;
  private bundle: string | null = null;
  private readonly tag = `g${process.pid}`;

  constructor(private readonly opts: { workDir: string; templateRootfs: string; agentBinary: string; idMapBase?: number }) {
    this.dir = path.join(opts.workDir, 'runsc');
    this.state = path.join(this.dir, 'state');
    this.rootfs = path.join(this.dir, 'rootfs');
  }

  async setup(): Promise<void> {
    const owner = this.opts.idMapBase ?? 100000;
    for (const d of ['upper', 'work', 'rootfs', 'state', 'bundle', 'sock']) fs.mkdirSync(path.join(this.dir, d), { recursive: true, mode: 0o711 });
    fs.chmodSync(path.join(this.dir, 'upper'), fs.statSync(this.opts.templateRootfs).mode & 0o7777);
    for (const d of ['upper', 'work', 'sock']) fs.chownSync(path.join(this.dir, d), owner, owner);
    const o = `lowerdir=${this.opts.templateRootfs},upperdir=${path.join(this.dir, 'upper')},workdir=${path.join(this.dir, 'work')}`;
    await runOk('mount', ['-t', 'overlay', 'overlay', '-o', o, this.rootfs]);
    this.mounted = true;
    const spec = buildGvisorSpec({
      id: this.tag,
      rootfs: this.rootfs,
      agentBinary: this.opts.agentBinary,
      socketDir: path.join(this.dir, 'sock'),
      resources: { cpus: 1, memoryMb: 512, pids: 256 },
      idMapBase: owner,
      idMapSize: 65536,
      seccomp: loadDefaultSeccomp(SANDBOX_CAPABILITIES),
      swapAccounting: fs.existsSync('/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes'),
    });
    spec.process.args = ['/bin/sleep', '1000000'];
    spec.linux.cgroupsPath = `/${CGROUP_PARENT}/${this.tag}-0`;
    this.bundle = path.join(this.dir, 'bundle');
    fs.writeFileSync(path.join(this.bundle, 'config.json'), JSON.stringify(spec), { mode: 0o600 });
  }

  private runsc(args: string[]): string[] {
    return ['--root', this.state, ...args];
  }

  /** `runsc run --detach` (stdio ignored: never pipes). One container at a time. */
  async start(): Promise<string> {
    if (!this.bundle) throw new Error('RunscBaseline.setup() first');
    const id = `${this.tag}-${this.seq++}`;
    this.live.add(id);
    const r = await run('runsc', this.runsc([...RUN_FLAGS, 'run', '--detach', '--bundle', this.bundle, id]));
    if (r.code !== 0) throw new Error(`runsc run --detach exited ${r.code ?? r.signal}`);
    return id;
  }

  async exec(id: string, argv: string[]): Promise<string> {
    const r = await run('runsc', this.runsc(['exec', id, ...argv]), { capture: true });
    if (r.code !== 0) throw new Error(`runsc exec ${id} ${argv.join(' ')} exited ${r.code ?? r.signal}: ${r.stderr.trim().slice(0, 300)}`);
    return r.stdout;
  }

  /** Untimed in the scenario: without a subreaper here, `runsc delete` waits for the host's init to reap (~1.5 s). */
  async delete(id: string): Promise<void> {
    await run('runsc', this.runsc(['kill', id, 'KILL']), { capture: true });
    const r = await run('runsc', this.runsc(['delete', '--force', id]), { capture: true });
    if (r.code !== 0 && !/does not exist|not exist/i.test(r.stderr)) throw new Error(`runsc delete ${id}: ${r.stderr.trim().slice(0, 300)}`);
    this.live.delete(id);
  }

  /** Delete every container, unmount, remove cgroups and files. Never throws. */
  async cleanup(): Promise<string[]> {
    const problems: string[] = [];
    for (const id of [...this.live]) await this.delete(id).catch((e: Error) => problems.push(e.message));
    if (this.mounted) {
      const u = await run('umount', [this.rootfs], { capture: true });
      if (u.code !== 0 && (await run('umount', ['-l', this.rootfs], { capture: true })).code !== 0) problems.push(`umount ${this.rootfs}: ${u.stderr.trim()}`);
      this.mounted = false;
    }
    problems.push(...removeBenchCgroups(this.tag));
    fs.rmSync(this.dir, { recursive: true, force: true });
    return problems;
  }
}
