/**
 * RuntimeDriver on gVisor (runsc, ptrace platform): the sandbox's processes
 * talk to gVisor's user-space kernel (the sentry), not to the host's. Same
 * disk, layers and agent as the container backend: capsule-mount makes the
 * sandbox's ext4 disk and its overlay of layers, and runsc takes that merged
 * directory as its root (its gofer serves the files). What differs from
 * OciRuntimeDriver, from measurements on this kind of host (HOST-NOTES.md):
 *
 * - the agent's socket: runsc cannot pass a listening fd, so the agent binds
 *   one in a host directory bind-mounted for it (`--host-uds=create`), and
 *   create waits until it answers;
 * - `--network=none` (loopback only) and `--oci-seccomp`, so the same tightened
 *   filter applies inside gVisor's kernel too;
 * - the pids limit is RLIMIT_NPROC inside (gvisor/bundle.ts);
 * - runsc runs through capsule-launcher, a subreaper: `runsc delete` waits
 *   until the sandbox process is reaped, 1.1-1.8 s unless someone reaps it at
 *   once (~130 ms with the launcher);
 * - no pause, stop/start, volumes, egress (the `gateway` network mode),
 *   snapshots, in-place limit changes or change export: each answers
 *   `unsupported` (the capabilities say so first; ADR 0010 says why).
 *
 * Files: the sandbox dir (disk, overlay, bundle) is <data>/sandboxes/<id>
 * like a container's, so template-in-use scans see both; runsc's state and
 * the socket dirs live under <data>/gvisor. The socket dir is made first and
 * removed last, so it marks a gVisor sandbox's leftovers.
 */
import { WithoutLifecycleVerbs } from '../without-lifecycle.js';
import { BusyIds } from '../busy-ids.js';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import type { DataPaths } from '../../config/index.js';
import type { AgentEndpoint } from '../../agent/types.js';
import { ConflictError, InvalidArgumentError, isCapsuleError, RuntimeError, UnsupportedError } from '../../errors/index.js';
import { ensurePrivateDir } from '../agent-socket.js';
import { cgroupsPathFor, SANDBOX_CAPABILITIES } from '../bundle.js';
import { cgroupMounts, killCgroupProcs, readCgroupStats, readOomKills, removeCgroupDirs } from '../cgroups.js';
import { checkId, MAX_LAYERS, MIN_DISK_MB, SANDBOX_ID_RE, type RuntimeLogger } from '../driver.js';
import { Launcher, LAUNCHER_PATH } from '../launcher.js';
import { writeLowerIds } from '../lower-ids.js';
import { setupSandboxMounts, teardownSandboxMounts, type MountHelperOptions } from '../mounts.js';
import { OciCli, summarizeStderr, type OciResult } from '../oci-cli.js';
import { removeSandboxDir, sandboxLayout } from '../overlay.js';
import { loadDefaultSeccomp, type OciSeccomp } from '../seccomp.js';
import type { CgroupLimits, ContainerInfo, ContainerSpec, ContainerStatus, RuntimeCapabilities, RuntimeDriver, SandboxStats } from '../types.js';
import { buildGvisorSpec, GVISOR_SOCKET_NAME, gvisorSeccomp } from './bundle.js';

export interface GvisorDriverOptions {
  /** `runsc` (found on PATH) or an absolute path. */
  runsc?: string;
  paths: DataPaths;
  /** Host uid/gid of sandbox root. */
  idMapBase: number;
  idMapSize: number;
  /** Host path of the agent binary (copied onto each sandbox's disk, like the container backend). */
  agentBinary: string;
  logger?: RuntimeLogger;
  /** Seccomp policy inside gVisor (`--oci-seccomp`): default the tightened containers-common profile; null = none. */
  seccomp?: OciSeccomp | null;
  /** Timeout for `runsc run --detach` plus the agent's first answer (ms). */
  createTimeoutMs?: number;
  mountHelper?: string;
  directIo?: boolean;
  /** Runs runsc and the mount helper, and reaps the sandbox processes (default: the built launcher; null = spawn()). */
  launcher?: Launcher | null;
  /** A directory for runsc's debug logs (`--debug --debug-log DIR/`); for diagnosing a failing start. */
  debugLogDir?: string;
}

/**
 * Flags for every `runsc run`. ptrace is the one platform that works here (kvm spins forever on this
 * kind of host; this release has no systrap); it is also the one that needs nothing from the host.
 */
const RUN_FLAGS = ['--platform=ptrace', '--network=none', '--host-uds=create', '--oci-seccomp'];

/** Put in each gVisor sandbox's /tmp (see keepTmpOnDisk). */
export const TMP_KEEP_FILE = '.capsule-tmp-on-disk';

const NOT_FOUND_RE = /does not exist|not exist|no such file|not found/i;
const noopLogger: RuntimeLogger = { info() {}, warn() {}, error() {} };

export class GvisorDriver extends WithoutLifecycleVerbs implements RuntimeDriver {
  readonly kind = 'runsc';
  protected readonly backendLabel = 'the gVisor backend';
  readonly capabilities: RuntimeCapabilities = {
    isolation: 'gvisor',
    pause: false,
    stop: false,
    volumes: false,
    snapshot: false,
    memorySnapshot: false,
    updateResources: false,
    exportChanges: false,
    fileHandoff: false,
    network: ['none'],
    maxLayers: MAX_LAYERS,
    reasons: {
      snapshot: 'gVisor sandboxes cannot be frozen through the cgroup freezer here, and their files live in gVisor (no change export); use isolation "container"',
      memorySnapshot: 'not implemented for gVisor: runsc checkpoint/restore is not wired in (ADR 0010)',
    },
  };
  private readonly opts: GvisorDriverOptions;
  private readonly cli: OciCli;
  private readonly log: RuntimeLogger;
  private readonly busy = new BusyIds();
  private version: string | null = null;
  private swapAccounting: boolean | null = null;

  constructor(opts: GvisorDriverOptions) {
    super();
    if (!path.isAbsolute(opts.agentBinary)) throw new InvalidArgumentError(`agentBinary must be an absolute path, got ${opts.agentBinary}`);
    this.opts = opts;
    const launcher = opts.launcher !== undefined ? opts.launcher : Launcher.available(LAUNCHER_PATH) ? new Launcher(LAUNCHER_PATH) : null;
    this.cli = new OciCli(opts.runsc ?? 'runsc', opts.paths.gvisorState, launcher);
    this.log = opts.logger ?? noopLogger;
  }

  get name(): string {
    return this.version ?? 'runsc';
  }

  /** Ask runsc for its version (sets `name`, e.g. "runsc 0.0~20221219.0"); throws when it does not run. */
  async probe(): Promise<string> {
    const r = await this.cli.runCaptured(['--version'], { timeoutMs: 10_000 });
    if (r.code !== 0) throw new RuntimeError(`${this.cli.bin} --version failed: ${summarizeStderr(r.stderr)}`);
    const m = r.stdout.match(/^runsc version (\S+)/m);
    this.version = m ? `runsc ${m[1]}` : r.stdout.split('\n')[0]?.trim() || 'runsc';
    return this.version;
  }

  agentEndpoint(id: string): AgentEndpoint {
    return { kind: 'unix', path: path.join(this.opts.paths.gvisorSocketDir(id), GVISOR_SOCKET_NAME) };
  }

  async create(spec: ContainerSpec, signal?: AbortSignal): Promise<ContainerInfo> {
    const { id } = spec;
    checkId(id);
    if (spec.isolation !== undefined && spec.isolation !== 'gvisor') {
      throw new InvalidArgumentError(`the gVisor backend cannot make a sandbox with isolation ${spec.isolation}`, { id });
    }
    this.busy.claim(id, `sandbox ${id} is already being created or destroyed`);
    const started = performance.now();
    const paths = this.opts.paths;
    const layout = sandboxLayout(paths.sandboxDir(id));
    const socketDir = paths.gvisorSocketDir(id);
    let made = false;
    try {
      signal?.throwIfAborted();
      if (fs.existsSync(layout.dir) || fs.existsSync(socketDir)) {
        throw new ConflictError(`sandbox ${id} already has leftovers in ${layout.dir} or ${socketDir}: destroy it first`);
      }
      const { diskMb } = spec.writable;
      if (!Number.isInteger(diskMb) || diskMb < MIN_DISK_MB) {
        throw new InvalidArgumentError(`diskMb must be an integer of at least ${MIN_DISK_MB}, got ${diskMb}`, { id });
      }
      if (spec.layers.length === 0 || spec.layers.length > MAX_LAYERS) {
        throw new InvalidArgumentError(`a sandbox stacks 1 to ${MAX_LAYERS} layers, got ${spec.layers.length}`, { id });
      }
      if (spec.network.mode !== 'none') {
        throw new UnsupportedError(`network mode ${spec.network.mode} is not supported by gVisor here (it runs --network=none)`, { id, backend: this.kind });
      }
      if ((spec.volumes?.length ?? 0) > 0) throw new UnsupportedError('the gVisor backend cannot attach volumes', { id, backend: this.kind, capability: 'volumes' });
      const seccomp = this.opts.seccomp === undefined ? gvisorSeccomp(loadDefaultSeccomp(SANDBOX_CAPABILITIES)) : this.opts.seccomp;

      // The socket dir first (see the file comment). runsc's gofer opens it as the sandbox's mapped root,
      // so the dirs above it are traversable (o+x) but not listable; the dir itself is that root's, 0700.
      await traversableDir(path.dirname(path.dirname(socketDir)));
      await traversableDir(path.dirname(socketDir));
      await ensurePrivateDir(paths.gvisorState);
      made = true;
      await fsp.mkdir(socketDir, { mode: 0o700 });
      await fsp.chown(socketDir, this.opts.idMapBase, this.opts.idMapBase);
      await fsp.mkdir(paths.sandboxes, { recursive: true, mode: 0o711 });
      const topFirst = [...spec.layers].reverse().map((l) => l.path);
      await setupSandboxMounts(
        {
          layout,
          layers: topFirst,
          diskMb,
          owner: this.opts.idMapBase,
          agentBinary: this.opts.agentBinary,
          directIo: this.opts.directIo ?? false,
          imageCache: paths.diskImages,
        },
        this.mountOpts(),
      );
      await writeLowerIds(layout.dir, topFirst);
      await this.keepTmpOnDisk(layout.rootfs);
      signal?.throwIfAborted();

      const config = buildGvisorSpec({
        id,
        rootfs: layout.rootfs,
        agentBinary: this.opts.agentBinary,
        agentDir: layout.agentDir,
        socketDir,
        resources: spec.resources,
        idMapBase: this.opts.idMapBase,
        idMapSize: this.opts.idMapSize,
        seccomp,
        swapAccounting: await this.hasSwapAccounting(),
        ...(spec.allowSetuid ? { allowSetuid: true } : {}),
      });
      await fsp.mkdir(layout.bundle, { mode: 0o700 });
      await fsp.writeFile(path.join(layout.bundle, 'config.json'), JSON.stringify(config), { mode: 0o600 });

      const pidFile = path.join(layout.bundle, 'init.pid');
      const timeoutMs = this.opts.createTimeoutMs ?? 60_000;
      const deadline = Date.now() + timeoutMs;
      const debug = this.opts.debugLogDir ? ['--debug', `--debug-log=${this.opts.debugLogDir.replace(/\/?$/, '/')}`] : [];
      const r = await this.cli.runDetached([...RUN_FLAGS, ...debug, 'run', '--detach', '--pid-file', pidFile, '--bundle', layout.bundle, id], {
        timeoutMs,
        ...(signal ? { signal } : {}),
      });
      if (r.code !== 0) throw this.createError(id, r);
      signal?.throwIfAborted(); // it runs: the catch below deletes it
      const pid = Number((await fsp.readFile(pidFile, 'utf8').catch(() => '')).trim());
      await this.waitForAgent(id, Number.isInteger(pid) && pid > 0 ? pid : undefined, deadline, signal);
      this.log.info({ id, ms: Math.round(performance.now() - started), pid }, 'gVisor sandbox created');
      return { id, status: 'running', ...(pid > 0 ? { pid } : {}) };
    } catch (e) {
      if (made) {
        try {
          await this.destroyUnlocked(id);
        } catch (cleanupErr) {
          this.log.error({ id, err: String(cleanupErr) }, 'cleanup after failed create failed');
        }
      }
      if (signal?.aborted && !isCapsuleError(e)) {
        const why = signal.reason instanceof Error ? signal.reason.message : String(signal.reason);
        throw new RuntimeError(`creating sandbox ${id} was aborted (${why}); nothing was left behind`, { id }, { cause: e });
      }
      throw e;
    } finally {
      this.busy.release(id);
    }
  }

  /**
   * runsc mounts a memory-backed tmpfs over an empty /tmp: files there would count against memory
   * (filling it ends the whole sandbox, see SECURITY.md) instead of the disk quota as under crun. A
   * file in /tmp keeps it on the sandbox's disk; a bind mount would too, but makes /tmp another
   * mount (no hard links or renames across it). Nothing is done when /tmp is not a plain directory.
   */
  private async keepTmpOnDisk(rootfs: string): Promise<void> {
    const tmp = path.join(rootfs, 'tmp');
    try {
      if (!(await fsp.lstat(tmp)).isDirectory()) return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      await fsp.mkdir(tmp);
      await fsp.chmod(tmp, 0o1777);
      await fsp.chown(tmp, this.opts.idMapBase, this.opts.idMapBase);
    }
    const keep = path.join(tmp, TMP_KEEP_FILE);
    await fsp.writeFile(keep, 'Keeps /tmp on this sandbox\'s disk under gVisor (runsc puts a tmpfs over an empty /tmp). Safe to delete.\n', { mode: 0o644, flag: 'wx' }).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
    });
    await fsp.lchown(keep, this.opts.idMapBase, this.opts.idMapBase);
  }

  /**
   * The agent binds its socket a moment after runsc returns: connect until it accepts (the probe
   * connection closes at once; the agent drops a peer that never says hello). Gives up when the
   * sandbox process dies, at the deadline, or on abort.
   */
  private async waitForAgent(id: string, pid: number | undefined, deadline: number, signal?: AbortSignal): Promise<void> {
    const sock = path.join(this.opts.paths.gvisorSocketDir(id), GVISOR_SOCKET_NAME);
    for (let delay = 2; ; delay = Math.min(delay * 2, 50)) {
      signal?.throwIfAborted();
      if (fs.existsSync(sock) && (await canConnect(sock))) return;
      if (pid !== undefined && !alive(pid)) {
        throw new RuntimeError(`gVisor sandbox ${id} exited before its agent listened: run \`capsule doctor\` (gvisor check)`, { id });
      }
      if (Date.now() > deadline) throw new RuntimeError(`the agent of gVisor sandbox ${id} did not listen in time`, { id });
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  private createError(id: string, r: OciResult): RuntimeError {
    const msg = summarizeStderr(r.stderr) || `exit ${r.code ?? r.signal}`;
    let hint = '';
    if (/ptrace/i.test(msg)) hint = ': the ptrace platform needs ptrace to be allowed for root (check kernel.yama.ptrace_scope)';
    else if (/cgroup/i.test(msg)) hint = ': check `capsule doctor` (cgroups) and that the daemon runs as root';
    return new RuntimeError(`runsc could not start sandbox ${id}: ${msg}${hint}`, { id, exitCode: r.code });
  }

  async destroy(id: string): Promise<void> {
    checkId(id);
    await this.busy.hold(id, `sandbox ${id} is being created or destroyed`, () => this.destroyUnlocked(id));
  }

  private async destroyUnlocked(id: string): Promise<void> {
    const started = performance.now();
    const paths = this.opts.paths;
    const layout = sandboxLayout(paths.sandboxDir(id));
    const problems: string[] = [];
    const cgroups = cgroupsPathFor(id);
    // The sentry, the gofer and the ptrace stubs are all in the sandbox's cgroup: SIGKILL them first, so
    // `runsc delete` only has state to remove (it waits for the sandbox process to be reaped: the
    // launcher does that at once; after a daemon restart the host's init does, more slowly).
    const stray = await killCgroupProcs(cgroups);
    if (stray.length > 0) problems.push(`processes ${stray.join(', ')} survive SIGKILL in cgroup ${cgroups}`);
    try {
      const d = await this.cli.runCaptured(['delete', '--force', id], { timeoutMs: 15_000 });
      if (d.code !== 0 && !NOT_FOUND_RE.test(d.stderr) && (await this.inspect(id)).status !== 'missing') {
        problems.push(`runsc delete --force ${id} failed: ${summarizeStderr(d.stderr)}`);
      }
    } catch (e) {
      problems.push((e as Error).message); // runsc unusable: still clean up the rest
    }
    try {
      await teardownSandboxMounts(layout.dir, this.mountOpts());
    } catch (e) {
      problems.push((e as Error).message);
    }
    try {
      await removeSandboxDir(layout.dir);
    } catch (e) {
      problems.push((e as Error).message);
    }
    const leftCgroups = await removeCgroupDirs(cgroups);
    if (leftCgroups.length > 0) problems.push(`cgroup dirs still busy: ${leftCgroups.join(', ')}`);
    if (problems.length > 0) throw new RuntimeError(`destroying gVisor sandbox ${id} left things behind: ${problems.join('; ')}`, { id });
    // Last: while it exists, listLeftovers names this sandbox.
    await fsp.rm(paths.gvisorSocketDir(id), { recursive: true, force: true });
    this.log.info({ id, ms: Math.round(performance.now() - started) }, 'gVisor sandbox destroyed');
  }

  async inspect(id: string): Promise<ContainerInfo> {
    checkId(id);
    const r = await this.cli.runCaptured(['state', id], { timeoutMs: 10_000 });
    if (r.code !== 0) {
      if (NOT_FOUND_RE.test(r.stderr) || NOT_FOUND_RE.test(r.stdout) || r.stderr.trim() === '') return { id, status: 'missing' };
      throw new RuntimeError(`runsc state ${id} failed: ${summarizeStderr(r.stderr)}`, { id });
    }
    let st: { status?: string; pid?: number };
    try {
      st = JSON.parse(r.stdout) as { status?: string; pid?: number };
    } catch (e) {
      throw new RuntimeError(`runsc state ${id} printed something that is not JSON`, { id }, { cause: e });
    }
    let status: ContainerStatus = st.status === 'running' ? 'running' : st.status === 'paused' ? 'paused' : 'stopped';
    // runsc reports from its state file: a sandbox process killed behind its back still reads "running".
    if (status === 'running' && typeof st.pid === 'number' && st.pid > 0 && !alive(st.pid)) status = 'stopped';
    const info: ContainerInfo = { id, status };
    if (status !== 'stopped' && typeof st.pid === 'number' && st.pid > 0) info.pid = st.pid;
    return info;
  }

  async list(): Promise<string[]> {
    if (!fs.existsSync(this.opts.paths.gvisorState)) return [];
    const r = await this.cli.runCaptured(['list', '--quiet'], { timeoutMs: 15_000 });
    if (r.code !== 0) throw new RuntimeError(`runsc list failed: ${summarizeStderr(r.stderr)}`);
    return r.stdout
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && SANDBOX_ID_RE.test(l))
      .sort();
  }

  /** Its own sandboxes only: those with a socket dir (made first, removed last) or runsc state. */
  async listLeftovers(): Promise<string[]> {
    const ids = new Set(await this.list());
    try {
      for (const e of await fsp.readdir(path.dirname(this.opts.paths.gvisorSocketDir('x')))) if (SANDBOX_ID_RE.test(e)) ids.add(e);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    return [...ids].sort();
  }

  oomKills(id: string): Promise<number> {
    return readOomKills(cgroupsPathFor(id));
  }

  update(id: string, _resources: Partial<CgroupLimits>): Promise<void> {
    return this.unsupported(id, 'updateResources', 'change the limits of a running sandbox (its pids limit is a limit inside gVisor, set at start)');
  }


  /**
   * The host's view: the sandbox's cgroup holds the sentry, the gofer and the ptrace stubs, so
   * memory is what the whole gVisor sandbox costs the host, and `pids` / `pidsLimit` count host
   * tasks against the loose host cap (gvisorHostTasks), not the processes inside (their limit is
   * RLIMIT_NPROC inside gVisor). The disk is the sandbox's own ext4, as under crun.
   */
  async stats(id: string): Promise<SandboxStats> {
    checkId(id);
    const cg = await readCgroupStats(cgroupsPathFor(id));
    let diskUsedBytes = 0;
    let diskTotalBytes = 0;
    try {
      const st = await fsp.statfs(sandboxLayout(this.opts.paths.sandboxDir(id)).disk);
      diskTotalBytes = st.blocks * st.bsize;
      diskUsedBytes = (st.blocks - st.bfree) * st.bsize;
    } catch {
      /* not mounted (being destroyed): no disk figures */
    }
    return { ...cg, diskUsedBytes, diskTotalBytes };
  }


  /** Stop the launcher process (sandboxes keep running). */
  async close(): Promise<void> {
    await this.cli.launcher?.close();
  }

  private mountOpts(): MountHelperOptions {
    return {
      ...(this.opts.mountHelper ? { helper: this.opts.mountHelper } : {}),
      ...(this.cli.launcher ? { launcher: this.cli.launcher } : {}),
    };
  }

  private async hasSwapAccounting(): Promise<boolean> {
    if (this.swapAccounting !== null) return this.swapAccounting;
    const mem = (await cgroupMounts()).find((m) => m.version === 1 && m.controllers.includes('memory'));
    this.swapAccounting = mem ? fs.existsSync(path.join(mem.mountPoint, 'memory.memsw.limit_in_bytes')) : true;
    return this.swapAccounting;
  }
}

/** A root-owned directory others may pass through but not list (0711). */
async function traversableDir(dir: string): Promise<void> {
  await fsp.mkdir(dir, { recursive: true, mode: 0o711 });
  const st = await fsp.stat(dir);
  if ((st.mode & 0o777) !== 0o711) await fsp.chmod(dir, 0o711);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function canConnect(sockPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection({ path: sockPath });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
