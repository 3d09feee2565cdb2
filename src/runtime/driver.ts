/**
 * RuntimeDriver on top of an OCI runtime CLI (crun by default; runc works;
 * runsc is untested). One sandbox = one overlay of its layers on its own disk
 * + one bundle + one container whose init is the agent, listening on a socket
 * the daemon created. Passes the driver contract suite
 * (test/integration/runtime/contract.ts) with crun and with runc.
 */
import { BusyIds } from './busy-ids.js';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { DataPaths, ResourceLimits } from '../config/index.js';
import { ConflictError, InvalidArgumentError, isCapsuleError, RuntimeError } from '../errors/index.js';
import { openAgentSocket, ensurePrivateDir, type PendingAgentSocket } from './agent-socket.js';
import { openAgentFile } from './agent-file.js';
import { AGENT_SOCKET_NAME, buildOciSpec, cgroupsPathFor, cpuQuotaUs, memoryBytes, SANDBOX_CAPABILITIES } from './bundle.js';
import { CHECKPOINT_DIR, CHECKPOINT_MARKER, checkCriu, criuEnv, criuLogTail, type CriuCheck } from './criu.js';
import { cgroupMounts, freezerState, killCgroupProcs, readCgroupStats, readOomKills, removeCgroupDirs, setFreezerState, writeCgroupV1Limits, type CgroupMount } from './cgroups.js';
import { OciCli, summarizeStderr, type OciResult } from './oci-cli.js';
import { remountSandbox, setupSandboxMounts, teardownSandboxMounts, unmountKeepingDisk, type MountHelperOptions } from './mounts.js';
import { relinkMovedLayers, writeLowerIds, LOWER_ID_FILE } from './lower-ids.js';
import { checkTarget, VolumeDisks } from './volumes.js';
import { Launcher, LAUNCHER_PATH } from './launcher.js';
import { copyTree } from '../layers/native.js';
import { readMountPoints, removeSandboxDir, runTool, sandboxLayout } from './overlay.js';
import { loadDefaultSeccomp, type OciSeccomp } from './seccomp.js';
import { SeccompBpfCompiler } from './seccomp-bpf.js';
import type { CgroupLimits, ContainerInfo, ContainerSpec, ContainerStatus, NetworkMode, NetworkSpec, RuntimeCapabilities, RuntimeDriver, SandboxStats } from './types.js';
import type { Duplex } from 'node:stream';
import net from 'node:net';
import { connectThroughRelay, relayPid, RELAY_PATH, startRelay, stopRelay } from './netrelay.js';
import type { AgentEndpoint } from '../agent/types.js';

export interface RuntimeLogger {
  debug?(obj: unknown, msg?: string): void;
  info(obj: unknown, msg?: string): void;
  warn(obj: unknown, msg?: string): void;
  error(obj: unknown, msg?: string): void;
}

export interface OciRuntimeDriverOptions {
  /** `crun`, `runc`, `runsc` or an absolute path. */
  runtime: string;
  paths: DataPaths;
  /** Host uid/gid of container root. */
  idMapBase: number;
  idMapSize: number;
  /** Host path of the agent binary; each sandbox gets a copy on its own disk, bind-mounted read-only at /.capsule. */
  agentBinary: string;
  logger?: RuntimeLogger;
  /** Seccomp policy: default = the tightened containers-common profile; null = none (debugging only). */
  seccomp?: OciSeccomp | null;
  /**
   * Give crun the seccomp filter compiled once (annotation run.oci.seccomp_bpf_data) instead of
   * letting it compile linux.seccomp on every create. Default true; ignored for other runtimes.
   */
  precompileSeccomp?: boolean;
  /** The filter compiler; default dist/native/capsule-seccomp-bpf. */
  seccompTool?: string;
  /** Timeout for `run -d` (ms). */
  createTimeoutMs?: number;
  /** The native mount helper; default dist/native/capsule-mount. */
  mountHelper?: string;
  /**
   * Loop devices in direct-I/O mode (default false). Buffered, the image's
   * page cache absorbs writeback and is dropped unwritten when the image is
   * deleted at destroy (measured: unmount of a disk with 200 MiB written 10 ms
   * buffered, 180 ms direct). The cost: a second, reclaimable copy of the
   * sandbox's written data in the host page cache (the image's), which on
   * cgroup v1 is not charged to the sandbox's memory cgroup.
   */
  directIo?: boolean;
  /**
   * Run the runtime and the mount helper through capsule-launcher (no fork of
   * the daemon per call; container inits get reaped). Default: the built
   * dist/native/capsule-launcher when present; null = Node's spawn().
   */
  launcher?: Launcher | null;
  /** The network relay (gateway mode); default dist/native/capsule-netrelay. */
  netRelay?: string;
  /** CRIU for memory snapshots (runc only); default $CAPSULE_CRIU, else /usr/local/sbin/criu, else /usr/sbin/criu. */
  criu?: string;
}

/** Send buffer of the daemon's agent sockets (the kernel caps it at net.core.wmem_max, 4 MiB by default here). */
const AGENT_SOCKET_SNDBUF = 4 * 1024 * 1024;

/** Layers one overlay stacks (native/capsule-mount.c MAX_LAYERS; the kernel allows 500). */
export const MAX_LAYERS = 128;

/** Smallest sandbox disk: mke2fs needs a few MiB of metadata, and a rootfs upper needs room to breathe. */
export const MIN_DISK_MB = 16;

/** Sandbox ids become paths, hostnames, cgroup and container names: keep them boring. */
export const SANDBOX_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

/** Refuse an id that could name anything but one sandbox's files, cgroup and container (every backend uses it). */
export function checkId(id: string): void {
  if (!SANDBOX_ID_RE.test(id) || id.includes('..')) {
    throw new InvalidArgumentError(`invalid sandbox id ${JSON.stringify(id)}: use 1-63 of [A-Za-z0-9_.-], starting with a letter or digit`);
  }
}

const NOT_FOUND_RE = /does not exist|not exist|no such file|not found/i;

const noopLogger: RuntimeLogger = { info() {}, warn() {}, error() {} };

/** The pid a runtime wrote with --pid-file; NaN or 0 when there is none (yet). */
async function readPidFile(file: string): Promise<number> {
  return Number((await fsp.readFile(file, 'utf8').catch(() => '')).trim());
}

export class OciRuntimeDriver implements RuntimeDriver {
  private readonly opts: OciRuntimeDriverOptions;
  private readonly cli: OciCli;
  private readonly log: RuntimeLogger;
  private readonly busy = new BusyIds();
  private version: string | null = null;
  private swapAccounting: boolean | null = null;
  /** The host's cgroup mounts, read once: pause and resume must not parse the mount table each time. */
  private cgroupMountList: Promise<CgroupMount[]> | null = null;
  private readonly seccompBpf: SeccompBpfCompiler | null;
  private readonly volumeDisks: VolumeDisks;
  /** What `probe` found of CRIU (runc only); null before the probe. */
  private criu: CriuCheck | null = null;

  constructor(opts: OciRuntimeDriverOptions) {
    if (!path.isAbsolute(opts.agentBinary)) {
      throw new InvalidArgumentError(`agentBinary must be an absolute path, got ${opts.agentBinary}`);
    }
    this.opts = opts;
    const launcher = opts.launcher !== undefined ? opts.launcher : Launcher.available(LAUNCHER_PATH) ? new Launcher(LAUNCHER_PATH) : null;
    this.cli = new OciCli(opts.runtime, opts.paths.runtimeState, launcher);
    this.log = opts.logger ?? noopLogger;
    this.seccompBpf =
      opts.precompileSeccomp === false || this.cli.flavor !== 'crun'
        ? null
        : new SeccompBpfCompiler({ tool: opts.seccompTool, cacheDir: opts.paths.seccompCache, logger: this.log });
    this.volumeDisks = new VolumeDisks(opts.paths, opts.idMapBase, () => this.mountOpts());
  }

  get name(): string {
    return this.version ?? this.cli.flavor;
  }

  get kind(): string {
    return this.cli.flavor === 'other' ? path.basename(this.opts.runtime) : this.cli.flavor;
  }

  /**
   * Containers on the host kernel (runsc: gVisor's own kernel). Pause is the
   * cgroup freezer, which every OCI runtime here has; stop keeps the
   * sandbox's disk image and start runs the same bundle on it again; a
   * snapshot copies the frozen upper dir (exportChanges). Memory snapshots
   * are not implemented: they need CRIU 4 and runc (crun 1.8.1 has no CRIU
   * support), ADR 0013; the reason says so rather than pretending.
   */
  get capabilities(): RuntimeCapabilities {
    return {
      isolation: this.cli.flavor === 'runsc' ? 'gvisor' : 'container',
      pause: true,
      stop: true,
      volumes: true,
      snapshot: true,
      memorySnapshot: this.memorySnapshotReason() === null,
      updateResources: true,
      exportChanges: true,
      // Under runsc the agent's descriptors live in the Sentry, not in the host kernel.
      fileHandoff: this.cli.flavor !== 'runsc',
      network: this.networkModes(),
      maxLayers: MAX_LAYERS,
      ...(this.memorySnapshotReason() !== null ? { reasons: { memorySnapshot: this.memorySnapshotReason()! } } : {}),
    };
  }

  /** Why this driver cannot hibernate sandboxes (null: it can). docs/adr/0018-memory-snapshots.md. */
  private memorySnapshotReason(): string | null {
    if (this.cli.flavor !== 'runc') {
      return `hibernate needs the runc runtime with CRIU 4 (${this.cli.flavor === 'crun' ? 'crun 1.8.1 has no CRIU support' : `${this.kind} has no checkpoint here`}): run the daemon with CAPSULE_RUNTIME=runc (--runtime runc); see docs/adr/0018-memory-snapshots.md`;
    }
    if (!this.criu) return 'CRIU was not checked yet (the runtime was not probed)';
    return this.criu.ok ? null : this.criu.reason;
  }

  /** runc sandboxes: the agent binds its own socket in a host directory bound into the sandbox, so CRIU can dump it. */
  private get agentListensItself(): boolean {
    return this.cli.flavor === 'runc';
  }

  private agentSocketDir(id: string): string {
    return path.join(this.opts.paths.sandboxDir(id), 'sock');
  }

  private modes: NetworkMode[] | null = null;

  /** `gateway` needs the relay binary and nftables on the host; without them only `none` is offered. */
  private networkModes(): NetworkMode[] {
    if (!this.modes) {
      const relay = this.opts.netRelay ?? RELAY_PATH;
      const nft = ['/usr/sbin/nft', '/sbin/nft', '/usr/bin/nft'].some((p) => fs.existsSync(p));
      this.modes = Launcher.available(relay) && nft ? ['none', 'gateway'] : ['none'];
    }
    return this.modes;
  }

  private relayPaths(id: string) {
    return { control: this.opts.paths.relaySocket(id), pidFile: this.opts.paths.relayPid(id) };
  }

  async attachNetwork(id: string, spec: NetworkSpec): Promise<void> {
    checkId(id);
    if (spec.mode === 'none') return;
    if (relayPid(this.relayPaths(id).pidFile) !== null) return;
    const info = await this.inspect(id);
    if (info.status !== 'running' || !info.pid) throw new ConflictError(`sandbox ${id} is not running (${info.status}): cannot set up its network`, { id });
    await this.startNetwork(id, info.pid, spec);
  }

  private async startNetwork(id: string, initPid: number, spec: NetworkSpec): Promise<void> {
    if (spec.mode !== 'gateway') return;
    if (!this.networkModes().includes('gateway')) {
      throw new InvalidArgumentError(`network mode gateway needs dist/native/capsule-netrelay (npm run build) and nftables (apt-get install nftables)`, { id });
    }
    const mem = (await cgroupMounts()).find((m) => m.version === 1 && m.controllers.includes('pids'));
    const procsFile = mem ? path.join(mem.mountPoint, this.cgroupsPath(id), 'cgroup.procs') : null;
    const started = performance.now();
    await startRelay({
      id,
      initPid,
      gateway: spec.gateway,
      procsFile,
      launcher: this.cli.launcher,
      ...this.relayPaths(id),
      ...(this.opts.netRelay ? { binary: this.opts.netRelay } : {}),
    });
    this.log.info({ id, ms: Math.round(performance.now() - started) }, 'sandbox network relay started');
  }

  connectPort(id: string, port: number, signal?: AbortSignal): Promise<Duplex> {
    checkId(id);
    return connectThroughRelay(this.relayPaths(id).control, id, port, signal);
  }

  /** Ask the runtime for its version (sets `name`, e.g. "crun 1.8.1"). */
  async probe(): Promise<string> {
    const r = await this.cli.runCaptured(['--version'], { timeoutMs: 10_000 });
    if (r.code !== 0) throw new RuntimeError(`${this.cli.bin} --version failed: ${summarizeStderr(r.stderr)}`);
    const m = r.stdout.match(/^(\S+) version (\S+)/m);
    this.version = m ? `${path.basename(m[1] ?? this.cli.flavor)} ${m[2]}` : r.stdout.split('\n')[0]?.trim() || this.cli.flavor;
    if (this.cli.flavor === 'runc') this.criu = await checkCriu(this.opts.criu);
    return this.version;
  }

  /** The CRIU found by `probe` (doctor, tests). */
  get criuCheck(): CriuCheck | null {
    return this.criu;
  }

  agentEndpoint(id: string): AgentEndpoint {
    // A sandbox made with its own socket directory keeps it (the daemon may have been restarted with another runtime).
    const own = this.agentSocketDir(id);
    if (this.agentListensItself || fs.existsSync(own)) {
      if (fs.existsSync(own)) return { kind: 'unix', path: path.join(own, AGENT_SOCKET_NAME) };
    }
    return { kind: 'unix', path: this.opts.paths.agentSocket(id) };
  }

  async openAgentFile(id: string, fd: number, ino: bigint): Promise<number | undefined> {
    checkId(id);
    if (!this.capabilities.fileHandoff) return undefined;
    const layout = sandboxLayout(this.opts.paths.sandboxDir(id));
    // The agent is the sandbox's init; the pid file is rewritten at every start and restore.
    const pid = await readPidFile(path.join(layout.bundle, 'init.pid'));
    const r = openAgentFile(pid, fd, ino, layout.rootfs);
    if (typeof r === 'string') {
      this.log.debug?.({ id, reason: r }, 'file handoff declined: the upload goes through the agent');
      return undefined;
    }
    return r;
  }

  private async initFromPidFile(id: string, pidFile: string): Promise<ContainerInfo> {
    const pid = await readPidFile(pidFile);
    if (!Number.isInteger(pid) || pid <= 0) return this.inspect(id);
    try {
      process.kill(pid, 0);
      return { id, status: 'running', pid };
    } catch {
      return { id, status: 'stopped' };
    }
  }

  oomKills(id: string): Promise<number> {
    return readOomKills(this.cgroupsPath(id));
  }

  /** The cgroups' counters, and the sandbox's own ext4 (mounted on the host at its layout's `disk`). */
  async stats(id: string): Promise<SandboxStats> {
    checkId(id);
    const cg = await readCgroupStats(this.cgroupsPath(id));
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

  async pause(id: string): Promise<void> {
    checkId(id);
    await this.freeze(id, 'FROZEN', 'pause');
  }

  async resume(id: string): Promise<void> {
    checkId(id);
    await this.freeze(id, 'THAWED', 'resume');
  }

  /**
   * The freezer file straight away: a `<runtime> state` first would cost more
   * (~7 ms) than the freeze itself, and a missing cgroup says the same thing.
   */
  private async freeze(id: string, state: 'FROZEN' | 'THAWED', verb: 'pause' | 'resume'): Promise<void> {
    try {
      this.cgroupMountList ??= cgroupMounts();
      if (await setFreezerState(this.cgroupsPath(id), state, 5000, await this.cgroupMountList)) return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new RuntimeError(`cannot ${verb} sandbox ${id}: its container does not exist`, { id });
      throw new RuntimeError(`could not ${verb} sandbox ${id}: ${(e as Error).message}`, { id }, { cause: e });
    }
    if ((await this.inspect(id)).status === 'missing') throw new RuntimeError(`cannot ${verb} sandbox ${id}: its container does not exist`, { id });
    // No v1 freezer (a cgroup v2 host): the runtime knows its layout.
    const r = await this.cli.runCaptured([verb, id], { timeoutMs: 10_000 });
    if (r.code !== 0 && !/not paused|already paused|not running/i.test(r.stderr)) {
      throw new RuntimeError(`${this.cli.flavor} ${verb} ${id} failed: ${summarizeStderr(r.stderr)}`, { id });
    }
  }

  async exportChanges(id: string, dest: string, signal?: AbortSignal): Promise<void> {
    checkId(id);
    const upper = path.join(sandboxLayout(this.opts.paths.sandboxDir(id)).disk, 'upper');
    if (!fs.existsSync(upper)) throw new RuntimeError(`sandbox ${id} has no writable layer to export`, { id });
    const state = await freezerState(this.cgroupsPath(id));
    const wasRunning = state === 'THAWED';
    if (wasRunning) await this.pause(id);
    try {
      await copyTree(upper, dest, signal);
    } finally {
      if (wasRunning) await this.resume(id).catch((e: unknown) => this.log.error({ id, err: String(e) }, 'could not thaw a sandbox after exporting its changes'));
    }
  }

  async update(id: string, resources: Partial<CgroupLimits>): Promise<void> {
    checkId(id);
    const limits = {
      ...(resources.memoryMb !== undefined ? { memoryBytes: memoryBytes(resources.memoryMb) } : {}),
      ...(resources.cpus !== undefined ? { cpuQuotaUs: cpuQuotaUs(resources.cpus) } : {}),
      ...(resources.pids !== undefined ? { pids: resources.pids } : {}),
    };
    if (Object.keys(limits).length === 0) return;
    const swapAccounting = await this.hasSwapAccounting();
    try {
      if (await writeCgroupV1Limits(this.cgroupsPath(id), { ...limits, swapAccounting })) return;
    } catch (e) {
      throw new RuntimeError(`could not change the limits of sandbox ${id}: ${(e as Error).message}`, { id }, { cause: e });
    }
    // No v1 hierarchies (a cgroup v2 host): the runtime knows its layout.
    const args = ['update'];
    if (limits.memoryBytes !== undefined) {
      args.push('--memory', String(limits.memoryBytes));
      if (swapAccounting) args.push('--memory-swap', String(limits.memoryBytes));
    }
    if (limits.cpuQuotaUs !== undefined) args.push('--cpu-quota', String(limits.cpuQuotaUs));
    if (limits.pids !== undefined) args.push('--pids-limit', String(limits.pids));
    const r = await this.cli.runCaptured([...args, id], { timeoutMs: 10_000 });
    if (r.code !== 0) throw new RuntimeError(`${this.cli.flavor} update ${id} failed: ${summarizeStderr(r.stderr)}`, { id });
  }

  private cgroupsPath(id: string): string {
    return cgroupsPathFor(id);
  }

  private async hasSwapAccounting(): Promise<boolean> {
    if (this.swapAccounting !== null) return this.swapAccounting;
    const mem = (await cgroupMounts()).find((m) => m.version === 1 && m.controllers.includes('memory'));
    this.swapAccounting = mem ? fs.existsSync(path.join(mem.mountPoint, 'memory.memsw.limit_in_bytes')) : true;
    return this.swapAccounting;
  }

  async create(spec: ContainerSpec, signal?: AbortSignal): Promise<ContainerInfo> {
    const { id } = spec;
    checkId(id);
    this.busy.claim(id, `sandbox ${id} is already being created or destroyed`);
    const started = performance.now();
    const paths = this.opts.paths;
    const layout = sandboxLayout(paths.sandboxDir(id));
    let made = false;
    try {
      signal?.throwIfAborted();
      if (fs.existsSync(layout.dir) || fs.existsSync(paths.agentSocket(id))) {
        throw new ConflictError(`sandbox ${id} already has leftovers in ${layout.dir}: destroy it first`);
      }
      const seccomp = this.opts.seccomp === undefined ? loadDefaultSeccomp(SANDBOX_CAPABILITIES) : this.opts.seccomp;
      const { diskMb } = spec.writable;
      if (!Number.isInteger(diskMb) || diskMb < MIN_DISK_MB) {
        throw new InvalidArgumentError(`diskMb must be an integer of at least ${MIN_DISK_MB}, got ${diskMb}`, { id });
      }
      if (spec.layers.length === 0 || spec.layers.length > MAX_LAYERS) {
        throw new InvalidArgumentError(`a sandbox stacks 1 to ${MAX_LAYERS} layers, got ${spec.layers.length}`, { id });
      }
      if (!this.networkModes().includes(spec.network.mode)) {
        throw new InvalidArgumentError(`network mode ${spec.network.mode} is not supported by ${this.kind} here`, { id });
      }
      const volumes = spec.volumes ?? [];
      for (const v of volumes) checkTarget(v.target);
      if (new Set(volumes.map((v) => v.target)).size !== volumes.length) throw new InvalidArgumentError('two volumes cannot share a path', { id });
      // capsule-mount takes the topmost layer first, then the ones beneath it.
      const topFirst = [...spec.layers].reverse().map((l) => l.path);
      await fsp.mkdir(paths.sandboxes, { recursive: true, mode: 0o711 });
      await ensurePrivateDir(paths.runtimeState);
      made = true;
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
      let agentSocketDir: string | undefined;
      if (this.agentListensItself) {
        agentSocketDir = this.agentSocketDir(id);
        if (Buffer.byteLength(path.join(agentSocketDir, AGENT_SOCKET_NAME)) >= 108) {
          throw new InvalidArgumentError(`the agent socket path under ${agentSocketDir} is too long for a unix socket: use a shorter data directory or sandbox id`, { id });
        }
        await fsp.mkdir(agentSocketDir, { mode: 0o700 });
        await fsp.chown(agentSocketDir, this.opts.idMapBase, this.opts.idMapBase);
      }
      await this.volumeDisks.record(layout.dir, volumes);
      for (const v of volumes) await this.volumeDisks.prepare(v.volumeId, v.sizeMb);
      signal?.throwIfAborted();

      const config = buildOciSpec({
        id,
        rootfs: layout.rootfs,
        agentBinary: this.opts.agentBinary,
        agentDir: layout.agentDir,
        resources: spec.resources,
        binds: volumes.map((v) => ({ source: this.volumeDisks.source(v.volumeId), destination: v.target, readOnly: v.readOnly })),
        idMapBase: this.opts.idMapBase,
        idMapSize: this.opts.idMapSize,
        seccomp,
        seccompBpf: seccomp && this.seccompBpf ? await this.seccompBpf.precompiled(seccomp) : null,
        runtime: this.cli.flavor,
        swapAccounting: await this.hasSwapAccounting(),
        ...(spec.allowSetuid ? { allowSetuid: true } : {}),
        ...(agentSocketDir ? { agentSocketDir } : {}),
      });
      await fsp.mkdir(layout.bundle, { mode: 0o700 });
      await fsp.writeFile(path.join(layout.bundle, 'config.json'), JSON.stringify(config), { mode: 0o600 });

      const info = await this.runContainer(id, layout.bundle, signal);
      if (spec.network.mode !== 'none') await this.startNetwork(id, info.pid!, spec.network);
      this.log.info({ id, ms: Math.round(performance.now() - started), pid: info.pid }, 'sandbox container created');
      return info;
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
   * `<runtime> run --detach` of a sandbox's bundle with the agent's listening
   * socket as fd 3; resolves once its init runs. Leaves the container behind
   * on failure (the caller removes it).
   */
  private async runContainer(id: string, bundle: string, signal?: AbortSignal): Promise<ContainerInfo> {
    const paths = this.opts.paths;
    const pidFile = path.join(bundle, 'init.pid');
    await fsp.rm(pidFile, { force: true });
    const ownSocket = fs.existsSync(this.agentSocketDir(id));
    const runArgs = ownSocket
      ? ['run', '--detach', '--pid-file', pidFile, '--bundle', bundle, id]
      : ['run', '--detach', '--preserve-fds', '1', '--pid-file', pidFile, '--bundle', bundle, id];
    const timeoutMs = this.opts.createTimeoutMs ?? 60_000;
    let r: OciResult;
    let sock: PendingAgentSocket | null = null;
    try {
      if (ownSocket) {
        // The agent binds its socket itself (buildOciSpec's agentSocketDir); an old one from an earlier run goes first.
        await fsp.rm(path.join(this.agentSocketDir(id), AGENT_SOCKET_NAME), { force: true });
        r = await this.cli.runDetached(runArgs, { timeoutMs, ...(signal ? { signal } : {}) });
      } else if (this.cli.launcher) {
        // The launcher binds the agent's socket itself and hands it to the runtime as fd 3.
        await ensurePrivateDir(path.dirname(paths.agentSocket(id)));
        r = await this.cli.runDetached(runArgs, { listenPath: paths.agentSocket(id), timeoutMs, ...(signal ? { signal } : {}) });
      } else {
        sock = await openAgentSocket(paths.agentSocket(id));
        const s = sock;
        r = await this.cli.runDetached(runArgs, { extraFds: [s.fd], onSpawned: () => s.handOff(), timeoutMs, ...(signal ? { signal } : {}) });
      }
    } catch (e) {
      sock?.discard();
      throw e;
    }
    if (r.code !== 0) {
      sock?.discard();
      throw this.createError(id, r);
    }
    signal?.throwIfAborted(); // the container runs: the caller's cleanup deletes it

    // The pid file instead of `<runtime> state`: one file read instead of a ~7 ms runtime call.
    const info = await this.initFromPidFile(id, pidFile);
    if (info.status !== 'running') {
      throw new RuntimeError(
        `sandbox ${id} did not stay up (${info.status}): the agent ${this.opts.agentBinary} exited at once; run it by hand to see why`,
        { id, status: info.status },
      );
    }
    if (ownSocket) await this.waitForAgentSocket(id, info.pid!, timeoutMs);
    return info;
  }

  /** An agent that binds its own socket does so a moment after the runtime returns: connect until it accepts. */
  private async waitForAgentSocket(id: string, pid: number, timeoutMs: number): Promise<void> {
    const sockPath = path.join(this.agentSocketDir(id), AGENT_SOCKET_NAME);
    const deadline = Date.now() + timeoutMs;
    for (let delay = 1; ; delay = Math.min(delay * 2, 50)) {
      const ok = await new Promise<boolean>((resolve) => {
        const c = net.connect(sockPath);
        c.once('connect', () => {
          c.destroy();
          resolve(true);
        });
        c.once('error', () => resolve(false));
      });
      if (ok) return;
      try {
        process.kill(pid, 0);
      } catch {
        throw new RuntimeError(`sandbox ${id} exited before its agent listened on ${sockPath}`, { id });
      }
      if (Date.now() > deadline) throw new RuntimeError(`the agent of sandbox ${id} did not listen on ${sockPath} in time`, { id });
      await new Promise((res) => setTimeout(res, delay));
    }
  }

  /**
   * Stop: every process ends (a paused sandbox is thawed first), the container,
   * its cgroups and the agent's socket go, and the disk is unmounted and
   * written through to the host's disk; the sandbox dir (disk.img, bundle,
   * layer links) stays for start. Idempotent.
   */
  async stop(id: string): Promise<void> {
    checkId(id);
    this.busy.claim(id, `sandbox ${id} is being created, started, stopped or destroyed`);
    try {
      const started = performance.now();
      await this.stopUnlocked(id);
      // A hibernated sandbox that is stopped loses its memory image: start boots it afresh.
      await fsp.rm(path.join(this.opts.paths.sandboxDir(id), CHECKPOINT_DIR), { recursive: true, force: true });
      this.log.info({ id, ms: Math.round(performance.now() - started) }, 'sandbox container stopped');
    } finally {
      this.busy.release(id);
    }
  }

  private async stopUnlocked(id: string): Promise<void> {
    const layout = sandboxLayout(this.opts.paths.sandboxDir(id));
    if (!fs.existsSync(layout.diskImage)) throw new RuntimeError(`cannot stop sandbox ${id}: it has no disk (${layout.diskImage}) to keep`, { id });
    const problems: string[] = [];
    // The relay lives in the container's network namespace, which goes with the container; start makes a new one.
    await stopRelay(this.relayPaths(id)).catch((e: unknown) => problems.push(`network relay: ${(e as Error).message}`));
    const frozen = await freezerState(this.cgroupsPath(id));
    if (frozen === 'FROZEN' || frozen === 'FREEZING') await setFreezerState(this.cgroupsPath(id), 'THAWED').catch(() => undefined);
    await this.releaseKeepingDisk(id, layout, problems);
    if (problems.length > 0) throw new RuntimeError(`stopping sandbox ${id} failed: ${problems.join('; ')}`, { id });
  }

  /**
   * What stop and hibernate both end with, once the container's processes are gone or dumped: the
   * container deleted, stray processes killed, the overlay and the disk unmounted (the disk kept), the
   * loop device released, the agent's sockets and the cgroups removed. What went wrong goes to `problems`.
   * Returns how long the loop device took to be released.
   */
  private async releaseKeepingDisk(id: string, layout: ReturnType<typeof sandboxLayout>, problems: string[]): Promise<number> {
    let releaseMs = 0;
    await this.deleteContainer(id, problems);
    const stray = await killCgroupProcs(this.cgroupsPath(id));
    if (stray.length > 0) problems.push(`processes ${stray.join(', ')} survive SIGKILL in cgroup ${this.cgroupsPath(id)}`);
    // Never lazily: a disk still mounted and mounted again by the next start (or restore) would be two
    // filesystems on one image; so the loop device must be released too before either mounts it again.
    if (problems.length === 0) {
      try {
        await unmountKeepingDisk(layout.dir, this.mountOpts());
        const w0 = performance.now();
        const held = await waitLoopReleased(layout.diskImage, 10_000);
        releaseMs = Math.round(performance.now() - w0);
        if (held.length > 0) problems.push(`its disk is still held by ${held.join(', ')} after the unmount`);
      } catch (e) {
        problems.push((e as Error).message);
      }
    }
    await fsp.rm(this.opts.paths.agentSocket(id), { force: true });
    await fsp.rm(path.join(this.agentSocketDir(id), AGENT_SOCKET_NAME), { force: true });
    const leftCgroups = await removeCgroupDirs(this.cgroupsPath(id));
    if (leftCgroups.length > 0) problems.push(`cgroup dirs still busy: ${leftCgroups.join(', ')}`);
    return releaseMs;
  }

  /**
   * Start a stopped sandbox: whatever a crash left of an earlier run is
   * removed (the disk kept), moved layers are linked again, the disk and the
   * overlay are mounted afresh (new loop device: after a reboot the old ones
   * are gone), and the same bundle runs. On failure it is stopped again.
   */
  async start(id: string, signal?: AbortSignal): Promise<ContainerInfo> {
    checkId(id);
    this.busy.claim(id, `sandbox ${id} is being created, started, stopped or destroyed`);
    const started = performance.now();
    const layout = sandboxLayout(this.opts.paths.sandboxDir(id));
    try {
      if (!fs.existsSync(layout.diskImage) || !fs.existsSync(path.join(layout.bundle, 'config.json'))) {
        throw new RuntimeError(`cannot start sandbox ${id}: its disk or bundle is gone from ${layout.dir}`, { id });
      }
      // Cheap checks first: a clean stop left no runtime state and no mounts, and needs no cleanup call.
      if (fs.existsSync(path.join(this.opts.paths.runtimeState, id)) || mountedOn(layout.disk, layout.dir) || mountedOn(layout.rootfs, layout.dir)) {
        await this.stopUnlocked(id);
      }
      // Its volumes first: after a host reboot they are not mounted, and an unmounted one must not be bound.
      for (const v of this.volumeDisks.recorded(layout.dir)) await this.volumeDisks.prepare(v.volumeId, v.sizeMb);
      const relinked = await relinkMovedLayers(layout.dir);
      if (relinked.length > 0) this.log.info({ id, relinked }, 'layers of a stopped sandbox had moved; linked them again');
      signal?.throwIfAborted();
      // Its last filesystem must be gone before a new one mounts the image (waitLoopReleased).
      const held = await waitLoopReleased(layout.diskImage, 10_000);
      if (held.length > 0) throw new RuntimeError(`cannot start sandbox ${id}: its disk is still held by ${held.join(', ')}`, { id });
      await remountSandbox({ dir: layout.dir, agentBinary: this.opts.agentBinary, directIo: this.opts.directIo ?? false }, this.mountOpts());
      try {
        const info = await this.runContainer(id, layout.bundle, signal);
        this.log.info({ id, ms: Math.round(performance.now() - started), pid: info.pid }, 'sandbox container started');
        return info;
      } catch (e) {
        await this.stopUnlocked(id).catch((err: unknown) => this.log.error({ id, err: String(err) }, 'cleanup after a failed start failed'));
        if (signal?.aborted && !isCapsuleError(e)) {
          const why = signal.reason instanceof Error ? signal.reason.message : String(signal.reason);
          throw new RuntimeError(`starting sandbox ${id} was aborted (${why}); it is stopped`, { id }, { cause: e });
        }
        throw e;
      }
    } finally {
      this.busy.release(id);
    }
  }

  /**
   * Hibernate: CRIU dumps every process of the running sandbox (memory, fds, its network namespace) into
   * images under its sandbox dir and the container ends; then what `restore` makes again goes (the network
   * relay, the overlay and the disk, unmounted and written through, the cgroups). The caller has closed its
   * agent connections first (a connection to the host cannot be dumped). On failure the sandbox runs on
   * (a dump that fails leaves the processes running) unless it is gone, which the error says.
   * Needs `capabilities.memorySnapshot`.
   */
  async checkpoint(id: string): Promise<{ ms: number; imageBytes: number }> {
    checkId(id);
    const why = this.memorySnapshotReason();
    if (why !== null) throw new RuntimeError(`cannot hibernate sandbox ${id}: ${why}`, { id });
    this.busy.claim(id, `sandbox ${id} is being created, started, stopped or destroyed`);
    try {
      const started = performance.now();
      const layout = sandboxLayout(this.opts.paths.sandboxDir(id));
      if (!fs.existsSync(this.agentSocketDir(id))) {
        throw new RuntimeError(`sandbox ${id} was made before memory snapshots (its agent inherits its socket): it cannot be hibernated; stop it instead`, { id });
      }
      const images = path.join(layout.dir, CHECKPOINT_DIR);
      await fsp.rm(images, { recursive: true, force: true });
      // CRIU writes the images as the sandbox's mapped root: the dir is that root's, and others may read it (runc).
      await fsp.mkdir(images, { mode: 0o755 });
      await fsp.chown(images, this.opts.idMapBase, this.opts.idMapBase);
      await fsp.chmod(images, 0o755);
      const frozen = await freezerState(this.cgroupsPath(id));
      if (frozen === 'FROZEN' || frozen === 'FREEZING') await setFreezerState(this.cgroupsPath(id), 'THAWED');
      // The relay lives outside the container (a host process in its netns): it cannot be dumped; restore starts one.
      await stopRelay(this.relayPaths(id)).catch((e: unknown) => this.log.warn({ id, err: String(e) }, 'stopping the network relay before a checkpoint failed'));
      const r = await this.cli.runCaptured(
        ['--criu', this.criu!.bin!, 'checkpoint', '--image-path', images, '--tcp-established', '--file-locks', id],
        { timeoutMs: 120_000, env: criuEnv() },
      );
      if (r.code !== 0) {
        const log = await criuLogTail(images, 'dump.log');
        await fsp.rm(images, { recursive: true, force: true });
        const still = await this.inspect(id).catch(() => ({ status: 'missing' as const }));
        throw new RuntimeError(
          `checkpoint of sandbox ${id} failed (it is ${still.status === 'running' ? 'still running' : still.status}): ${summarizeStderr(r.stderr)}${log ? `; criu: ${log}` : ''}`,
          { id, status: still.status },
        );
      }
      const dumpMs = Math.round(performance.now() - started);
      // The agent the dump maps: restore mounts the disk with this copy, not the daemon's current agent, which an
      // upgrade may have changed (CRIU refuses a mapped file that changed; the sandbox could never wake up).
      const agentName = path.basename(this.opts.agentBinary);
      await fsp.mkdir(path.join(images, 'agent'), { mode: 0o755 });
      await fsp.copyFile(path.join(layout.agentDir, agentName), path.join(images, 'agent', agentName));
      // runc removed the container; what start makes again goes too (as a stop does).
      const problems: string[] = [];
      const releaseMs = await this.releaseKeepingDisk(id, layout, problems);
      const imageBytes = await dirBytes(images);
      const ms = Math.round(performance.now() - started);
      await fsp.writeFile(path.join(images, CHECKPOINT_MARKER), JSON.stringify({ at: new Date().toISOString(), dumpMs, ms, imageBytes }));
      if (problems.length > 0) throw new RuntimeError(`sandbox ${id} was checkpointed but its cleanup failed: ${problems.join('; ')}`, { id });
      this.log.info({ id, dumpMs, releaseMs, ms, imageBytes }, 'sandbox hibernated');
      return { ms, imageBytes };
    } finally {
      this.busy.release(id);
    }
  }

  /**
   * Fork with memory, first half: with every process of the running sandbox frozen, CRIU dumps them and
   * leaves them running (`checkpoint --leave-running`), and its writable layer is copied into `dest` (as
   * exportChanges does): memory and files of the same instant. Returns the images' directory, which
   * `restoreFork` restores into other sandboxes and `dropForkImages` removes. The caller has closed its
   * agent connections first. Needs `capabilities.memorySnapshot`.
   */
  async exportChangesWithMemory(id: string, dest: string, signal?: AbortSignal): Promise<string> {
    checkId(id);
    const why = this.memorySnapshotReason();
    if (why !== null) throw new RuntimeError(`cannot fork sandbox ${id} with its memory: ${why}`, { id });
    if (!fs.existsSync(this.agentSocketDir(id))) throw new RuntimeError(`sandbox ${id} was made before memory snapshots: it cannot be forked with its memory`, { id });
    const layout = sandboxLayout(this.opts.paths.sandboxDir(id));
    const upper = path.join(layout.disk, 'upper');
    const images = path.join(layout.dir, `fork-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`);
    await fsp.mkdir(images, { mode: 0o755 });
    await fsp.chown(images, this.opts.idMapBase, this.opts.idMapBase);
    await fsp.chmod(images, 0o755);
    const state = await freezerState(this.cgroupsPath(id));
    const wasRunning = state === 'THAWED';
    if (wasRunning) await this.pause(id);
    try {
      for (let attempt = 0; ; attempt++) {
        const r = await this.cli.runCaptured(
          ['--criu', this.criu!.bin!, 'checkpoint', '--leave-running', '--image-path', images, '--tcp-established', '--file-locks', id],
          { timeoutMs: 120_000, env: criuEnv() },
        );
        if (r.code === 0) break;
        const log = await criuLogTail(images, 'dump.log');
        // The agent had not yet closed its end of a connection the daemon just closed (it was frozen first):
        // let it run a moment and try again.
        if (attempt < 4 && wasRunning && /Unix socket \d+ not found/.test(log)) {
          await this.resume(id);
          await new Promise((res) => setTimeout(res, 50 * (attempt + 1)));
          await this.pause(id);
          continue;
        }
        throw new RuntimeError(`checkpoint of sandbox ${id} for a fork failed: ${summarizeStderr(r.stderr)}${log ? `; criu: ${log}` : ''}`, { id });
      }
      const agentName = path.basename(this.opts.agentBinary);
      await fsp.mkdir(path.join(images, 'agent'), { mode: 0o755 });
      await fsp.copyFile(path.join(layout.agentDir, agentName), path.join(images, 'agent', agentName));
      await copyTree(upper, dest, signal);
      return images;
    } catch (e) {
      await fsp.rm(images, { recursive: true, force: true });
      throw e;
    } finally {
      if (wasRunning) await this.resume(id).catch((e: unknown) => this.log.error({ id, err: String(e) }, 'could not thaw a sandbox after its fork checkpoint'));
    }
  }

  /**
   * Fork with memory, second half: the freshly made, running sandbox `id` (started from the snapshot of the
   * same instant) gives up its own processes for those in `images`: its container goes, and CRIU restores the
   * checkpoint into a new container of its own bundle (its own id, disk, overlay, cgroup, agent socket); its
   * hostname is set to its id. Resolves once the restored agent listens. On failure the sandbox is left
   * without a container (the caller ends it).
   */
  async restoreFork(id: string, images: string): Promise<ContainerInfo> {
    checkId(id);
    this.busy.claim(id, `sandbox ${id} is being created, started, stopped or destroyed`);
    const started = performance.now();
    const layout = sandboxLayout(this.opts.paths.sandboxDir(id));
    try {
      const problems: string[] = [];
      await this.deleteContainer(id, problems);
      const stray = await killCgroupProcs(this.cgroupsPath(id));
      if (stray.length > 0) problems.push(`processes ${stray.join(', ')} survive SIGKILL`);
      await removeCgroupDirs(this.cgroupsPath(id));
      if (problems.length > 0) throw new RuntimeError(`cannot restore a fork into sandbox ${id}: ${problems.join('; ')}`, { id });
      // The agent the checkpoint maps, in place of the one the create copied (they differ after an upgrade).
      const agentName = path.basename(this.opts.agentBinary);
      const kept = path.join(images, 'agent', agentName);
      if (fs.existsSync(kept)) await fsp.copyFile(kept, path.join(layout.agentDir, agentName));
      const pidFile = path.join(layout.bundle, 'init.pid');
      await fsp.rm(pidFile, { force: true });
      await fsp.rm(path.join(this.agentSocketDir(id), AGENT_SOCKET_NAME), { force: true });
      // Each restore writes its log in its own work dir: forks restore from the same images.
      const work = path.join(layout.dir, 'restore-work');
      await fsp.rm(work, { recursive: true, force: true });
      await fsp.mkdir(work, { mode: 0o700 });
      const r = await this.cli.runDetached(
        ['--criu', this.criu!.bin!, 'restore', '--detach', '--image-path', images, '--work-path', work, '--tcp-established', '--file-locks', '--pid-file', pidFile, '--bundle', layout.bundle, id],
        { timeoutMs: 120_000, env: criuEnv() },
      );
      if (r.code !== 0) {
        const log = await criuLogTail(work, 'restore.log');
        throw new RuntimeError(`restore of a fork into sandbox ${id} failed: ${summarizeStderr(r.stderr)}${log ? `; criu: ${log}` : ''}`, { id });
      }
      const info = await this.initFromPidFile(id, pidFile);
      if (info.status !== 'running') throw new RuntimeError(`fork ${id} did not stay up after its restore (${info.status})`, { id });
      // The images carry the source's hostname (its UTS namespace); the host's root may name it anew.
      const h = await runTool('nsenter', ['--target', String(info.pid), '--uts', 'hostname', id], 10_000, 'apt-get install util-linux');
      if (h.code !== 0) throw new RuntimeError(`could not set the hostname of fork ${id}: ${h.stderr}`, { id });
      await this.waitForAgentSocket(id, info.pid!, 10_000);
      await fsp.rm(work, { recursive: true, force: true });
      this.log.info({ id, ms: Math.round(performance.now() - started), pid: info.pid }, 'fork restored');
      return info;
    } finally {
      this.busy.release(id);
    }
  }

  /** Remove a fork's images (what exportChangesWithMemory returned). */
  async dropForkImages(images: string): Promise<void> {
    if (!images.startsWith(this.opts.paths.sandboxes + path.sep) || !/\/fork-[a-z0-9-]+$/.test(images)) return;
    await fsp.rm(images, { recursive: true, force: true });
  }

  /** Whether `id` holds a complete checkpoint (a hibernated sandbox). */
  hasCheckpoint(id: string): boolean {
    return fs.existsSync(path.join(this.opts.paths.sandboxDir(id), CHECKPOINT_DIR, CHECKPOINT_MARKER));
  }

  /**
   * Wake a hibernated sandbox: its volumes, disk and overlay are mounted again (as start does), CRIU
   * restores its processes into a new container of the same bundle, and the images are deleted once
   * it runs. The caller connects to the agent again and re-attaches its processes. On failure the
   * mounts go again and the images stay (it is still hibernated).
   */
  async restore(id: string, signal?: AbortSignal): Promise<ContainerInfo> {
    checkId(id);
    const why = this.memorySnapshotReason();
    if (why !== null) throw new RuntimeError(`cannot restore sandbox ${id}: ${why}`, { id });
    this.busy.claim(id, `sandbox ${id} is being created, started, stopped or destroyed`);
    const started = performance.now();
    const layout = sandboxLayout(this.opts.paths.sandboxDir(id));
    const images = path.join(layout.dir, CHECKPOINT_DIR);
    try {
      if (!this.hasCheckpoint(id)) throw new RuntimeError(`cannot restore sandbox ${id}: it has no complete checkpoint in ${images}`, { id });
      if (!fs.existsSync(layout.diskImage) || !fs.existsSync(path.join(layout.bundle, 'config.json'))) {
        throw new RuntimeError(`cannot restore sandbox ${id}: its disk or bundle is gone from ${layout.dir}`, { id });
      }
      if (fs.existsSync(path.join(this.opts.paths.runtimeState, id)) || mountedOn(layout.disk, layout.dir) || mountedOn(layout.rootfs, layout.dir)) {
        await this.stopUnlocked(id);
      }
      for (const v of this.volumeDisks.recorded(layout.dir)) await this.volumeDisks.prepare(v.volumeId, v.sizeMb);
      await relinkMovedLayers(layout.dir);
      signal?.throwIfAborted();
      const held = await waitLoopReleased(layout.diskImage, 10_000);
      if (held.length > 0) throw new RuntimeError(`cannot restore sandbox ${id}: its disk is still held by ${held.join(', ')}`, { id });
      const kept = path.join(images, 'agent', path.basename(this.opts.agentBinary));
      const agentBinary = fs.existsSync(kept) ? kept : this.opts.agentBinary;
      await remountSandbox({ dir: layout.dir, agentBinary, directIo: this.opts.directIo ?? false }, this.mountOpts());
      const pidFile = path.join(layout.bundle, 'init.pid');
      try {
        await fsp.rm(pidFile, { force: true });
        await fsp.rm(path.join(this.agentSocketDir(id), AGENT_SOCKET_NAME), { force: true });
        const r = await this.cli.runDetached(
          ['--criu', this.criu!.bin!, 'restore', '--detach', '--image-path', images, '--tcp-established', '--file-locks', '--pid-file', pidFile, '--bundle', layout.bundle, id],
          { timeoutMs: 120_000, env: criuEnv() },
        );
        if (r.code !== 0) {
          const log = await criuLogTail(images, 'restore.log');
          throw new RuntimeError(`restore of sandbox ${id} failed: ${summarizeStderr(r.stderr)}${log ? `; criu: ${log}` : ''}`, { id });
        }
        const info = await this.initFromPidFile(id, pidFile);
        if (info.status !== 'running') throw new RuntimeError(`sandbox ${id} did not stay up after its restore (${info.status})`, { id });
        await this.waitForAgentSocket(id, info.pid!, 10_000);
        await fsp.rm(images, { recursive: true, force: true });
        this.log.info({ id, ms: Math.round(performance.now() - started), pid: info.pid }, 'sandbox restored');
        return info;
      } catch (e) {
        // Keep the images: it is still hibernated, and a later restore may work.
        const problems: string[] = [];
        await this.deleteContainer(id, problems).catch(() => undefined);
        await killCgroupProcs(this.cgroupsPath(id)).catch(() => undefined);
        await unmountKeepingDisk(layout.dir, this.mountOpts()).catch((err: unknown) => this.log.error({ id, err: String(err) }, 'unmounting after a failed restore failed'));
        await removeCgroupDirs(this.cgroupsPath(id)).catch(() => undefined);
        throw e;
      }
    } finally {
      this.busy.release(id);
    }
  }

  prepareVolume(volumeId: string, sizeMb: number): Promise<void> {
    return this.volumeDisks.prepare(volumeId, sizeMb);
  }

  removeVolume(volumeId: string): Promise<void> {
    return this.volumeDisks.remove(volumeId);
  }

  private mountOpts(): MountHelperOptions {
    return {
      ...(this.opts.mountHelper ? { helper: this.opts.mountHelper } : {}),
      ...(this.cli.launcher ? { launcher: this.cli.launcher } : {}),
    };
  }

  /** Whether any sandbox (running, pooled or left over) has `rootfs` as its lower layer. Unknown means yes. */
  templateInUse(rootfs: string): boolean {
    let want: string;
    try {
      const st = fs.statSync(rootfs);
      want = `${st.dev}:${st.ino}`;
    } catch {
      return false; // gone already
    }
    let dirs: string[];
    try {
      dirs = fs.readdirSync(this.opts.paths.sandboxes);
    } catch (e) {
      return (e as NodeJS.ErrnoException).code !== 'ENOENT';
    }
    for (const d of dirs) {
      try {
        if (fs.readFileSync(path.join(this.opts.paths.sandboxes, d, LOWER_ID_FILE), 'utf8').split('\n').includes(want)) return true;
      } catch (e) {
        // A sandbox dir without the file is being made (or predates it): it may use any tree.
        if ((e as NodeJS.ErrnoException).code === 'ENOENT' && fs.existsSync(path.join(this.opts.paths.sandboxes, d, 'rootfs'))) return true;
      }
    }
    return false;
  }

  /**
   * Give the daemon's end of an agent connection a send buffer that keeps an upload flowing: with the
   * kernel's ~208 KiB default the agent drained it every ~0.2 ms and waited on the daemon (uploads ran at
   * 0.6-0.7x of `crun exec cat`; 4 MiB measured 0.8x and more). Best effort: without the launcher, or when
   * the kernel refuses, uploads are just slower.
   */
  async tuneAgentSocket(fd: number): Promise<void> {
    await this.cli.launcher?.setSendBuffer(fd, AGENT_SOCKET_SNDBUF);
  }

  /** Stop the launcher process (containers keep running). */
  async close(): Promise<void> {
    await this.cli.launcher?.close();
  }

  private createError(id: string, r: OciResult): RuntimeError {
    const msg = summarizeStderr(r.stderr) || `exit ${r.code ?? r.signal}`;
    let hint = '';
    if (/hybrid mode/i.test(msg)) hint = ': run `capsule doctor --fix` (mounts the cgroup2 controllers as v1 hierarchies)';
    else if (/cgroup/i.test(msg)) hint = ': check `capsule doctor` (cgroups) and that the daemon runs as root';
    else if (/newuidmap|uid_map|user namespace|userns/i.test(msg)) hint = ': check that user namespaces are enabled (sysctl user.max_user_namespaces)';
    else if (/seccomp/i.test(msg)) hint = ': the seccomp profile was rejected; reinstall golang-github-containers-common';
    return new RuntimeError(`${this.cli.flavor} could not start sandbox ${id}: ${msg}${hint}`, { id, exitCode: r.code });
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

    try {
      await stopRelay(this.relayPaths(id));
    } catch (e) {
      problems.push(`network relay: ${(e as Error).message}`);
    }
    // A frozen process cannot die: thaw a paused sandbox so the kill below takes effect.
    const frozen = await freezerState(this.cgroupsPath(id));
    if (frozen === 'FROZEN' || frozen === 'FREEZING') await setFreezerState(this.cgroupsPath(id), 'THAWED').catch(() => undefined);
    try {
      await this.deleteContainer(id, problems);
    } catch (e) {
      problems.push((e as Error).message); // runtime unusable: still clean up the rest
    }
    // Processes the runtime no longer knows about (killed mid-create, lost state) still count.
    const stray = await killCgroupProcs(this.cgroupsPath(id));
    if (stray.length > 0) problems.push(`processes ${stray.join(', ')} survive SIGKILL in cgroup ${this.cgroupsPath(id)}`);
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
    await fsp.rm(paths.agentSocket(id), { force: true });
    const leftCgroups = await removeCgroupDirs(this.cgroupsPath(id));
    if (leftCgroups.length > 0) problems.push(`cgroup dirs still busy: ${leftCgroups.join(', ')}`);

    if (problems.length > 0) {
      throw new RuntimeError(`destroying sandbox ${id} left things behind: ${problems.join('; ')}`, { id });
    }
    this.log.info({ id, ms: Math.round(performance.now() - started) }, 'sandbox container destroyed');
  }

  /** Kill and delete the container; "does not exist" is success. */
  private async deleteContainer(id: string, problems: string[]): Promise<void> {
    const gone = (r: OciResult) => r.code === 0 || NOT_FOUND_RE.test(r.stderr);
    if (this.cli.flavor === 'runc') {
      // runc's `delete -f` polls every 100 ms; kill first, then a plain delete.
      const k = await this.cli.runCaptured(['kill', id, 'KILL'], { timeoutMs: 10_000 });
      if (k.code !== 0 && NOT_FOUND_RE.test(k.stderr)) return;
      for (let i = 0; i < 50; i++) {
        const d = await this.cli.runCaptured(['delete', id], { timeoutMs: 10_000 });
        if (gone(d)) return;
        await new Promise((r) => setTimeout(r, 5 + i * 2));
      }
    }
    let last: OciResult | null = null;
    for (let i = 0; i < 3; i++) {
      last = await this.cli.runCaptured(['delete', '--force', id], { timeoutMs: 15_000 });
      if (gone(last)) return;
      await new Promise((r) => setTimeout(r, 20));
    }
    if ((await this.inspect(id)).status === 'missing') return;
    problems.push(`${this.cli.flavor} delete --force ${id} failed: ${summarizeStderr(last?.stderr ?? '')}`);
  }

  async inspect(id: string): Promise<ContainerInfo> {
    checkId(id);
    const r = await this.cli.runCaptured(['state', id], { timeoutMs: 10_000 });
    if (r.code !== 0) {
      if (NOT_FOUND_RE.test(r.stderr) || r.stderr.trim() === '') {
        // No container, nothing mounted, but a disk and a bundle to start from: a stopped sandbox (also after a
        // host reboot). Mounts without a container are a crash's leftovers, not a stop.
        const layout = sandboxLayout(this.opts.paths.sandboxDir(id));
        const kept =
          fs.existsSync(layout.diskImage) &&
          fs.existsSync(path.join(layout.bundle, 'config.json')) &&
          !mountedOn(layout.disk, layout.dir) &&
          !mountedOn(layout.rootfs, layout.dir);
        return { id, status: kept ? (this.hasCheckpoint(id) ? 'hibernated' : 'stopped') : 'missing' };
      }
      throw new RuntimeError(`${this.cli.flavor} state ${id} failed: ${summarizeStderr(r.stderr)}`, { id });
    }
    let st: { status?: string; pid?: number };
    try {
      st = JSON.parse(r.stdout) as { status?: string; pid?: number };
    } catch (e) {
      throw new RuntimeError(`${this.cli.flavor} state ${id} printed something that is not JSON`, { id }, { cause: e });
    }
    const status: ContainerStatus =
      st.status === 'running' ? 'running' : st.status === 'paused' ? 'paused' : 'stopped';
    const info: ContainerInfo = { id, status };
    if (status !== 'stopped' && typeof st.pid === 'number' && st.pid > 0) info.pid = st.pid;
    return info;
  }

  async list(): Promise<string[]> {
    if (!fs.existsSync(this.opts.paths.runtimeState)) return [];
    const r = await this.cli.runCaptured(['list', '--quiet'], { timeoutMs: 15_000 });
    if (r.code !== 0) throw new RuntimeError(`${this.cli.flavor} list failed: ${summarizeStderr(r.stderr)}`);
    return r.stdout
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && SANDBOX_ID_RE.test(l))
      .sort();
  }

  async listLeftovers(): Promise<string[]> {
    const paths = this.opts.paths;
    const ids = new Set<string>();
    try {
      for (const e of await fsp.readdir(paths.sandboxes)) if (SANDBOX_ID_RE.test(e)) ids.add(e);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    const prefix = paths.sandboxes.endsWith('/') ? paths.sandboxes : `${paths.sandboxes}/`;
    for (const m of await readMountPoints()) {
      if (!m.startsWith(prefix)) continue;
      const first = m.slice(prefix.length).split('/')[0];
      if (first && SANDBOX_ID_RE.test(first)) ids.add(first);
    }
    try {
      for (const e of await fsp.readdir(paths.run)) {
        if (!e.endsWith('.sock') || e.startsWith('.')) continue;
        const id = e.slice(0, -'.sock'.length);
        if (SANDBOX_ID_RE.test(id)) ids.add(id);
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    try {
      for (const e of await fsp.readdir(paths.netRun)) {
        const m = /^(.+)\.(?:pid|sock)$/.exec(e);
        if (m && SANDBOX_ID_RE.test(m[1]!) && m[1] !== 'gateway') ids.add(m[1]!);
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    return [...ids].sort();
  }
}

/** Loop devices whose backing file is `image` (sysfs; a detached device has no `loop/backing_file`). */
function loopDevicesOf(image: string): string[] {
  const out: string[] = [];
  try {
    image = fs.realpathSync(image); // the kernel shows the path it opened, without symlinks
  } catch {
    /* gone: compare as given */
  }
  let devs: string[] = [];
  try {
    devs = fs.readdirSync('/sys/block').filter((b) => b.startsWith('loop'));
  } catch {
    return out;
  }
  for (const dev of devs) {
    try {
      if (fs.readFileSync(`/sys/block/${dev}/loop/backing_file`, 'utf8').trim() === image) out.push(dev);
    } catch {
      /* free */
    }
  }
  return out;
}

/**
 * Wait until no loop device holds `image` any more. An unmount in the host's namespace returns while the
 * filesystem can still live on in a mount namespace that is going away (a container CRIU just dumped): its
 * loop device (AUTOCLEAR) is released only when that goes. Mounting the image again before then would make
 * two filesystems on one image, and corrupt it (seen: "Corrupt inode bitmap" after quick hibernate/restore).
 */
async function waitLoopReleased(image: string, timeoutMs: number): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 2; ; delay = Math.min(delay * 2, 50)) {
    const held = loopDevicesOf(image);
    if (held.length === 0 || Date.now() > deadline) return held;
    await new Promise((r) => setTimeout(r, delay));
  }
}

/** Bytes of the files directly in `dir` (a checkpoint's images). */
async function dirBytes(dir: string): Promise<number> {
  let sum = 0;
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    if (e.isFile()) sum += (await fsp.stat(path.join(dir, e.name))).size;
  }
  return sum;
}

/** True when `p` is a mount point on top of `parent`'s filesystem (a different device). */
function mountedOn(p: string, parent: string): boolean {
  try {
    return fs.statSync(p).dev !== fs.statSync(parent).dev;
  } catch {
    return false;
  }
}
