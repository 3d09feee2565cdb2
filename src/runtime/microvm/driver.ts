/**
 * RuntimeDriver on QEMU microVMs (`-M microvm`): each sandbox is a VM with
 * its own guest kernel, so its code never talks to the host's kernel; the
 * emulator (QEMU, and KVM where the host has it) is the boundary.
 *
 * One sandbox = one QEMU process booting the guest kernel with an initramfs
 * whose init is the agent (`--vm-init`, agent/vm.c), two virtio-blk disks and
 * one virtio-serial port:
 * - `capsule-lower`: the template's layers merged into a read-only ext4,
 *   built once per set of layers (images.ts) and shared by every VM of it;
 * - `capsule-rw`: the sandbox's own sparse ext4 of `diskMb` (its writable
 *   layer and quota); inside, an overlay of the two is the guest's root;
 * - `capsule-agent`: the agent's transport, multiplexed (mux.ts): the daemon
 *   connects to the sandbox's agent socket like for a container.
 * No network device unless the sandbox has the `gateway` network mode (below).
 * CPUs and memory are the VM's size, and the QEMU process
 * runs in the sandbox's host cgroup (/capsule/<id>) with the memory of the
 * VM plus QEMU's own overhead, the CPU quota, and a pids cap for its threads.
 *
 * Without hardware virtualization (this kind of host: PVM's /dev/kvm runs
 * only PVM guests) QEMU emulates the CPU (TCG): the emulator is then the only
 * boundary, so open-backends.ts serves microvm under TCG only when a
 * test-only setting allows it (CAPSULE_MICROVM_ALLOW_TCG).
 *
 * Files: `<data>/microvm/sb/<id>/` holds disk.img, qemu.pid, serial.sock
 * (QEMU's end of the port) and agent.sock (the relay's listener); it is made
 * first and removed last, so it marks this backend's sandboxes and leftovers.
 * After a daemon restart the relay is started again on first use (inspect,
 * list): the guest drops its old streams at the new SYNC.
 *
 * Network (`gateway`, ADR 0017): QEMU is started in a network namespace of
 * its own (`unshare --net`, so the namespace lives exactly as long as QEMU),
 * where it makes the VM's tap (TAP_NAME) while still root; the guest's
 * virtio-net eth0 gets GUEST_ADDR/30 from its init (`capsule.net=`). Once the
 * agent answers, the same capsule-netrelay the containers use is started
 * against QEMU's pid with `--tap`: in that namespace (only lo and the tap, no
 * route anywhere else) it redirects every TCP connection from the tap to
 * itself and hands it to the daemon's gateway, answers DNS to the resolver
 * address through the daemon, drops the rest, and reaches ports inside at
 * GUEST_ADDR (port exposure). Policy, ledger and ports are the daemon's one
 * implementation; the guest kernel decides nothing. Files: `net` (this VM has
 * a network device), `net.sock` (the relay's control socket), `relay.pid`.
 * The relay exits with QEMU; destroy kills it anyway, and a restarted daemon
 * starts it again (attachNetwork) when it died.
 */
import { WithoutLifecycleVerbs } from '../without-lifecycle.js';
import { BusyIds } from '../busy-ids.js';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { DataPaths } from '../../config/index.js';
import type { AgentEndpoint } from '../../agent/types.js';
import { ConflictError, InvalidArgumentError, isCapsuleError, RuntimeError, UnsupportedError } from '../../errors/index.js';
import { cgroupsPathFor, cpuQuotaUs } from '../bundle.js';
import { cgroupMounts, killCgroupProcs, readCgroupStats, readOomKills, removeCgroupDirs, writeCgroupV1Limits } from '../cgroups.js';
import { checkId, MAX_LAYERS, MIN_DISK_MB, SANDBOX_ID_RE, type RuntimeLogger } from '../driver.js';
import type { Duplex } from 'node:stream';
import type { CgroupLimits, ContainerInfo, ContainerSpec, NetworkMode, NetworkSpec, RuntimeCapabilities, RuntimeDriver, SandboxStats } from '../types.js';
import { connectThroughRelay, relayPid, RELAY_PATH, startRelay, stopRelay } from '../netrelay.js';
import { initramfs, makeWritableDisk, NET_MODULES, templateImage } from './images.js';
import { type Accel, type GuestKernel, QEMU_BINARY } from './kernel.js';
import { MuxRelay } from './mux.js';

export interface MicrovmDriverOptions {
  paths: DataPaths;
  /** Host uid/gid of container root: the layers are stored shifted by it, and the image shifts them back. */
  idMapBase: number;
  idMapSize: number;
  /** The static agent: the guest's init. */
  agentBinary: string;
  kernel: GuestKernel;
  accel: Accel;
  /** QEMU binary (default qemu-system-x86_64 on PATH). */
  qemu?: string;
  logger?: RuntimeLogger & { warn(obj: unknown, msg?: string): void };
  /** Boot until the agent answers (ms); TCG boots take seconds. */
  createTimeoutMs?: number;
  /** The network relay (gateway mode); default dist/native/capsule-netrelay. */
  netRelay?: string;
}

/** The VM's tap, inside QEMU's own network namespace (so one name serves every VM). */
const TAP_NAME = 'cvm0';
/** The guest's eth0 address; the tap is the other usable address of its /30 (169.254.200.1). */
export const GUEST_ADDR = '169.254.200.2';
const UNSHARE_PATHS = ['/usr/bin/unshare', '/bin/unshare'];
const NFT_PATHS = ['/usr/sbin/nft', '/sbin/nft', '/usr/bin/nft'];

/** QEMU's own memory on top of the guest's (its code, device state, TCG's translation cache of TB_SIZE_MB). */
const QEMU_OVERHEAD_MB = 256;
const TB_SIZE_MB = 64;
/** Host tasks of one QEMU: vCPU threads, the main loop, and its block I/O thread pool (up to 64). */
export const QEMU_HOST_TASKS = 256;
const PORT_NAME = 'capsule-agent';
/** First of the 2^20 host uids QEMU processes run as (qemuUid); far above any sandbox's mapped range. */
const QEMU_UID_BASE = 0x50000000;
/** Keep this much of QEMU's console output (the guest's serial console) for error messages. */
const CONSOLE_TAIL = 16 * 1024;

const noopLogger = { info() {}, warn() {}, error() {} };

export class MicrovmDriver extends WithoutLifecycleVerbs implements RuntimeDriver {
  readonly kind = 'microvm';
  protected readonly backendLabel = 'the microVM backend';
  readonly capabilities: RuntimeCapabilities;
  private readonly baseCapabilities = {
    isolation: 'microvm' as const,
    pause: false,
    stop: false,
    volumes: false,
    snapshot: false,
    memorySnapshot: false,
    updateResources: false,
    exportChanges: false,
    fileHandoff: false,
    maxLayers: MAX_LAYERS,
    reasons: {
      snapshot: "a microVM's files live on its own disks inside the guest: no change export or snapshot yet (ADR 0017)",
      memorySnapshot: 'not implemented for microVMs (QEMU savevm/migration is not wired in; ADR 0017)',
    },
  };
  private readonly opts: MicrovmDriverOptions;
  private readonly log: RuntimeLogger & { warn(obj: unknown, msg?: string): void };
  private readonly busy = new BusyIds();
  private readonly relays = new Map<string, MuxRelay>();
  private readonly relayStarts = new Map<string, Promise<void>>();
  private readonly children = new Map<string, ChildProcess>();
  /** Template images being built, by key (images.ts). */
  private readonly imageBuilds = new Map<string, Promise<string>>();
  private version: string | null = null;
  private swapAccounting: boolean | null = null;
  readonly root: string;

  constructor(opts: MicrovmDriverOptions) {
    super();
    if (!path.isAbsolute(opts.agentBinary)) throw new InvalidArgumentError(`agentBinary must be an absolute path, got ${opts.agentBinary}`);
    this.opts = opts;
    this.log = opts.logger ?? noopLogger;
    this.root = path.join(path.dirname(opts.paths.sandboxes), 'microvm');
    this.capabilities = { ...this.baseCapabilities, network: this.networkModes(), networkAfterCreate: false };
  }

  /**
   * `gateway` needs the relay binary, nftables, unshare and /dev/net/tun on the host, and the guest kernel's
   * virtio-net modules (or a kernel with them built in); without them only `none` is offered.
   */
  private networkModes(): NetworkMode[] {
    const relay = this.opts.netRelay ?? RELAY_PATH;
    const mods = this.opts.kernel.modulesDir;
    const ok =
      fs.existsSync(relay) &&
      NFT_PATHS.some((p) => fs.existsSync(p)) &&
      UNSHARE_PATHS.some((p) => fs.existsSync(p)) &&
      fs.existsSync('/dev/net/tun') &&
      (mods === null || NET_MODULES.every((m) => fs.existsSync(path.join(mods, `${m}.ko`))));
    return ok ? ['none', 'gateway'] : ['none'];
  }

  get name(): string {
    return `${this.version ?? 'qemu'} microvm (${this.opts.accel})`;
  }

  get accel(): Accel {
    return this.opts.accel;
  }

  private sandboxDir(id: string): string {
    return path.join(this.root, 'sb', id);
  }

  private files(id: string) {
    const dir = this.sandboxDir(id);
    return {
      dir,
      disk: path.join(dir, 'disk.img'),
      pid: path.join(dir, 'qemu.pid'),
      serial: path.join(dir, 'serial.sock'),
      agent: path.join(dir, 'agent.sock'),
      /** An empty dir QEMU chroots into once started. */
      chroot: path.join(dir, 'empty'),
      /** Present when the VM has a network device (gateway mode). */
      net: path.join(dir, 'net'),
      /** The network relay's control socket and pid file. */
      control: path.join(dir, 'net.sock'),
      relayPid: path.join(dir, 'relay.pid'),
    };
  }

  /** Ask QEMU for its version (sets `name`); throws when it does not run. */
  async probe(): Promise<string> {
    const bin = this.opts.qemu ?? QEMU_BINARY;
    const out = await new Promise<string>((resolve, reject) => {
      const c = spawn(bin, ['--version'], { stdio: ['ignore', 'pipe', 'ignore'] });
      let s = '';
      c.stdout.on('data', (b: Buffer) => (s += b.toString()));
      c.on('error', reject);
      c.on('close', (code) => (code === 0 ? resolve(s) : reject(new Error(`${bin} --version exited with ${code}`))));
    });
    const m = out.match(/version (\S+)/);
    this.version = m ? `qemu ${m[1]}` : 'qemu';
    return this.version;
  }

  agentEndpoint(id: string): AgentEndpoint {
    return { kind: 'unix', path: this.files(id).agent };
  }

  async create(spec: ContainerSpec, signal?: AbortSignal): Promise<ContainerInfo> {
    const { id } = spec;
    checkId(id);
    if (spec.isolation !== undefined && spec.isolation !== 'microvm') {
      throw new InvalidArgumentError(`the microVM backend cannot make a sandbox with isolation ${spec.isolation}`, { id });
    }
    this.busy.claim(id, `sandbox ${id} is already being created or destroyed`);
    const started = performance.now();
    const f = this.files(id);
    let made = false;
    let writing: Promise<unknown> | null = null;
    try {
      signal?.throwIfAborted();
      const { diskMb } = spec.writable;
      if (!Number.isInteger(diskMb) || diskMb < MIN_DISK_MB) throw new InvalidArgumentError(`diskMb must be an integer of at least ${MIN_DISK_MB}, got ${diskMb}`, { id });
      if (spec.layers.length === 0 || spec.layers.length > MAX_LAYERS) throw new InvalidArgumentError(`a sandbox stacks 1 to ${MAX_LAYERS} layers, got ${spec.layers.length}`, { id });
      if (!this.capabilities.network.includes(spec.network.mode)) {
        throw new UnsupportedError(
          `network mode ${spec.network.mode} needs dist/native/capsule-netrelay (npm run build), nftables, unshare, /dev/net/tun and the guest kernel's virtio_net modules (capsule doctor --fix)`,
          { id, backend: this.kind },
        );
      }
      const net = spec.network.mode === 'gateway';
      if ((spec.volumes?.length ?? 0) > 0) throw new UnsupportedError('the microVM backend cannot attach volumes', { id, backend: this.kind, capability: 'volumes' });
      if (Buffer.byteLength(f.serial) > 100) throw new InvalidArgumentError(`the data dir path is too long for the VM's unix sockets (${f.serial})`, { id });
      await fsp.mkdir(path.join(this.root, 'sb'), { recursive: true, mode: 0o700 });
      try {
        await fsp.mkdir(f.dir, { mode: 0o700 });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new ConflictError(`sandbox ${id} already has leftovers in ${f.dir}: destroy it first`);
        throw e;
      }
      made = true;
      const topFirst = [...spec.layers].reverse().map((l) => l.path);
      for (const l of topFirst) {
        if (!fs.existsSync(l)) throw new RuntimeError(`layer ${l} does not exist: build the template first (capsule template build)`, { id });
      }
      const initrdP = initramfs(path.join(this.root, 'boot'), this.opts.agentBinary, this.opts.kernel.modulesDir);
      const diskP = makeWritableDisk(f.disk, diskMb);
      // What writes into the sandbox dir must be over before a cleanup removes it (the image build is not).
      writing = Promise.allSettled([initrdP, diskP]);
      const imageP = templateImage(path.join(this.root, 'images'), topFirst, { base: this.opts.idMapBase, size: this.opts.idMapSize }, this.imageBuilds);
      const [image, initrd] = await untilAborted(Promise.all([imageP, initrdP, diskP]), signal);
      signal?.throwIfAborted();
      await fsp.mkdir(f.chroot, { mode: 0o555 });
      if (net) await fsp.writeFile(f.net, `${GUEST_ADDR}\n`, { mode: 0o600 });
      const procsFiles = await this.makeCgroup(id, spec.resources);
      const timeoutMs = this.opts.createTimeoutMs ?? 60_000;
      const deadline = Date.now() + timeoutMs;
      const child = this.spawnQemu(id, spec.resources, image, initrd, procsFiles, net, spec.allowSetuid === true);
      const consoleTail = collectTail(child);
      const exited = new Promise<string>((resolve) => {
        child.once('exit', (code, sig) => resolve(`QEMU exited (${code === 97 ? 'could not join the sandbox cgroup' : (code ?? sig)}) while the VM booted`));
        child.once('error', (e) => resolve(`QEMU could not be started: ${e.message}`));
      });
      const relay = new MuxRelay(f.serial, f.agent, this.log);
      this.relays.set(id, relay);
      let timeout: NodeJS.Timeout | undefined;
      let onAbort: (() => void) | undefined;
      const timer = new Promise<string>((resolve) => (timeout = setTimeout(() => resolve(`the VM's agent did not answer within ${timeoutMs} ms`), timeoutMs)));
      const aborted = new Promise<string>((resolve) => {
        onAbort = () => resolve('aborted');
        if (signal?.aborted) onAbort();
        else signal?.addEventListener('abort', onAbort, { once: true });
      });
      const failure = await Promise.race([
        relay
          .start(deadline, signal)
          .then(() => relay.ready())
          .then(() => null),
        exited,
        timer,
        aborted,
      ])
        .catch((e: unknown) => (e as Error).message)
        .finally(() => {
          clearTimeout(timeout);
          if (onAbort) signal?.removeEventListener('abort', onAbort);
        });
      if (failure !== null) {
        this.log.warn({ id, console: consoleTail().slice(-4000) }, 'microVM boot failed; its console');
        const tail = consoleTail().trim().split('\n').slice(-6).join(' | ');
        throw new RuntimeError(`microVM ${id} did not boot: ${failure}${tail ? `; console: ${tail}` : ''}`, { id });
      }
      if (net && child.pid) await this.startNetwork(id, child.pid, spec.network);
      this.log.info({ id, ms: Math.round(performance.now() - started), pid: child.pid, accel: this.opts.accel }, 'microVM sandbox created');
      return { id, status: 'running', ...(child.pid ? { pid: child.pid } : {}) };
    } catch (e) {
      if (made) {
        await writing;
        await this.destroyUnlocked(id).catch((cleanupErr: unknown) => this.log.error({ id, err: String(cleanupErr) }, 'cleanup after failed create failed'));
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

  /** The sandbox's v1 cgroups with its limits; returns the cgroup.procs files QEMU joins before it runs. */
  private async makeCgroup(id: string, r: CgroupLimits): Promise<string[]> {
    const rel = cgroupsPathFor(id).replace(/^\/+/, '');
    const procs: string[] = [];
    const seen = new Set<string>();
    // One mount per hierarchy, the first (as writeCgroupV1Limits picks): the same hierarchy mounted again elsewhere,
    // e.g. the transient cgroup yard CRIU mounts under /tmp while it dumps a container, is the same tree, and such a
    // mount may be gone by the time QEMU's wrapper writes to it (the create then failed).
    for (const m of await cgroupMounts()) {
      const hierarchy = [...m.controllers].sort().join(',');
      if (m.version !== 1 || !m.controllers.some((c) => ['memory', 'cpu', 'cpuacct', 'pids'].includes(c)) || seen.has(hierarchy)) continue;
      seen.add(hierarchy);
      const dir = path.join(m.mountPoint, rel);
      await fsp.mkdir(dir, { recursive: true });
      procs.push(path.join(dir, 'cgroup.procs'));
    }
    const memoryBytes = (r.memoryMb + QEMU_OVERHEAD_MB) * 2 ** 20;
    await writeCgroupV1Limits(cgroupsPathFor(id), { memoryBytes, swapAccounting: await this.hasSwapAccounting(), cpuQuotaUs: cpuQuotaUs(r.cpus), pids: QEMU_HOST_TASKS });
    return procs;
  }

  private qemuArgs(id: string, r: CgroupLimits, image: string, initrd: string, net: boolean, allowSetuid: boolean): string[] {
    const f = this.files(id);
    const kvm = this.opts.accel === 'kvm';
    const vcpus = Math.max(1, Math.min(16, Math.ceil(r.cpus)));
    const append = [
      'console=ttyS0',
      'quiet',
      'loglevel=3',
      'reboot=t',
      'panic=-1',
      'tsc_early_khz=2000000',
      'i8042.noaux',
      `capsule.id=${id}`,
      `capsule.pids=${Math.max(8, Math.floor(r.pids))}`,
      ...(net ? [`capsule.net=${GUEST_ADDR}`] : []),
      // The guest's init sets no_new_privs for every command unless the template asks for setuid programs (sudo).
      ...(allowSetuid ? ['capsule.setuid=1'] : []),
      '--',
      '--vm-init',
    ].join(' ');
    return [
      '-M',
      'microvm,pit=on,pic=on,rtc=on',
      ...(kvm ? ['-accel', 'kvm', '-cpu', 'host,-arch-capabilities'] : ['-accel', `tcg,tb-size=${TB_SIZE_MB}`, '-cpu', 'qemu64']),
      '-m',
      `${Math.max(64, Math.round(r.memoryMb))}M`,
      '-smp',
      String(vcpus),
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      // A tap QEMU makes (and opens, as root, before -runas) in its own network namespace; or no NIC at all.
      ...(net
        ? ['-netdev', `tap,id=net0,ifname=${TAP_NAME},script=no,downscript=no`, '-device', 'virtio-net-device,netdev=net0']
        : ['-nic', 'none']),
      '-serial',
      'stdio',
      '-no-reboot',
      // QEMU's own seccomp filter, then (after opening its disks and sockets) an unprivileged uid of its
      // own and an empty root: an escape from the guest lands in neither root's files nor a sandbox's.
      // (elevateprivileges=allow: its filter comes first, and `deny` would kill the -runas setuid itself;
      // after that, QEMU has no capabilities left to elevate with.)
      '-sandbox',
      'on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny',
      '-runas',
      `${qemuUid(id)}:${qemuUid(id)}`,
      '-chroot',
      f.chroot,
      '-kernel',
      this.opts.kernel.kernel,
      '-initrd',
      initrd,
      '-append',
      append,
      '-device',
      'virtio-serial-device,id=vs0,max_ports=2',
      '-chardev',
      `socket,id=agent,path=${f.serial},server=on,wait=off`,
      '-device',
      `virtserialport,bus=vs0.0,chardev=agent,name=${PORT_NAME}`,
      '-drive',
      `id=lower,file=${image},format=raw,if=none,readonly=on,aio=threads`,
      '-device',
      'virtio-blk-device,drive=lower,serial=capsule-lower',
      '-drive',
      `id=rw,file=${f.disk},format=raw,if=none,aio=threads,discard=unmap`,
      '-device',
      'virtio-blk-device,drive=rw,serial=capsule-rw',
    ];
  }

  /**
   * QEMU joins the sandbox's cgroups before it execs (a tiny sh wrapper), detached so a daemon restart leaves it
   * running. With a network device it execs through `unshare --net` (same pid): a namespace of its own.
   */
  private spawnQemu(id: string, r: CgroupLimits, image: string, initrd: string, procsFiles: string[], net: boolean, allowSetuid: boolean): ChildProcess {
    const f = this.files(id);
    const bin = this.opts.qemu ?? QEMU_BINARY;
    const script = 'for f in $CAPSULE_CGROUP_PROCS; do echo $$ > "$f" || exit 97; done; exec "$@"';
    const unshare = UNSHARE_PATHS.find((p) => fs.existsSync(p)) ?? 'unshare';
    const cmd = [...(net ? [unshare, '--net', '--'] : []), bin, ...this.qemuArgs(id, r, image, initrd, net, allowSetuid)];
    const child = spawn('/bin/sh', ['-c', script, 'capsule-qemu', ...cmd], {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', CAPSULE_CGROUP_PROCS: procsFiles.join(' ') },
    });
    child.unref();
    child.on('error', (e) => this.log.warn({ id, err: e.message }, 'QEMU could not be started'));
    if (child.pid) fs.writeFileSync(f.pid, `${child.pid}\n`, { mode: 0o600 });
    this.children.set(id, child);
    child.once('exit', () => {
      if (this.children.get(id) === child) this.children.delete(id);
      this.relays.get(id)?.close();
    });
    return child;
  }

  async destroy(id: string): Promise<void> {
    checkId(id);
    await this.busy.hold(id, `sandbox ${id} is being created or destroyed`, () => this.destroyUnlocked(id));
  }

  private async destroyUnlocked(id: string): Promise<void> {
    const started = performance.now();
    const f = this.files(id);
    const problems: string[] = [];
    this.relays.get(id)?.close();
    this.relays.delete(id);
    const pid = this.qemuPid(id);
    if (pid !== null) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone already */
      }
    }
    const cgroups = cgroupsPathFor(id);
    const stray = await killCgroupProcs(cgroups);
    if (stray.length > 0) problems.push(`processes ${stray.join(', ')} survive SIGKILL in cgroup ${cgroups}`);
    if (pid !== null) {
      for (let i = 0; i < 200 && isQemu(pid); i++) await new Promise((r) => setTimeout(r, 10));
      if (isQemu(pid)) problems.push(`QEMU (pid ${pid}) survives SIGKILL`);
    }
    // The relay ends with QEMU (and the namespace with both); kill it anyway, in case it outlived it.
    await stopRelay({ control: f.control, pidFile: f.relayPid }).catch((e: unknown) => problems.push(`network relay: ${(e as Error).message}`));
    const leftCgroups = await removeCgroupDirs(cgroups);
    if (leftCgroups.length > 0) problems.push(`cgroup dirs still busy: ${leftCgroups.join(', ')}`);
    if (problems.length > 0) throw new RuntimeError(`destroying microVM ${id} left things behind: ${problems.join('; ')}`, { id });
    await fsp.rm(f.dir, { recursive: true, force: true });
    this.log.info({ id, ms: Math.round(performance.now() - started) }, 'microVM sandbox destroyed');
  }

  private qemuPid(id: string): number | null {
    const child = this.children.get(id);
    if (child?.pid && child.exitCode === null && child.signalCode === null) return child.pid;
    try {
      const pid = Number(fs.readFileSync(this.files(id).pid, 'utf8').trim());
      return Number.isInteger(pid) && pid > 0 && isQemu(pid) ? pid : null;
    } catch {
      return null;
    }
  }

  async inspect(id: string): Promise<ContainerInfo> {
    checkId(id);
    if (!fs.existsSync(this.sandboxDir(id))) return { id, status: 'missing' };
    const pid = this.qemuPid(id);
    if (pid === null) return { id, status: 'stopped' };
    if (!this.busy.has(id)) await this.ensureRelay(id);
    return { id, status: 'running', pid };
  }

  /** After a daemon restart nobody listens on a running VM's agent socket: start its relay again. */
  private async ensureRelay(id: string): Promise<void> {
    const have = this.relays.get(id);
    if (have && have.endReason === null) return;
    let p = this.relayStarts.get(id);
    if (!p) {
      const f = this.files(id);
      const relay = new MuxRelay(f.serial, f.agent, this.log);
      this.relays.set(id, relay);
      p = relay
        .start(Date.now() + 5000)
        .catch((e: unknown) => {
          relay.close();
          this.log.warn({ id, err: String(e) }, "could not reconnect to a microVM's agent port");
        })
        .finally(() => this.relayStarts.delete(id));
      this.relayStarts.set(id, p);
    }
    await p;
  }

  async list(): Promise<string[]> {
    const ids = await this.listLeftovers();
    const out: string[] = [];
    for (const id of ids) if ((await this.inspect(id)).status !== 'missing') out.push(id);
    return out;
  }

  async listLeftovers(): Promise<string[]> {
    try {
      return (await fsp.readdir(path.join(this.root, 'sb'))).filter((e) => SANDBOX_ID_RE.test(e)).sort();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
  }

  oomKills(id: string): Promise<number> {
    return readOomKills(cgroupsPathFor(id));
  }

  /** The QEMU process's cgroup (the whole VM's cost to the host), and the sandbox disk's allocated blocks. */
  async stats(id: string): Promise<SandboxStats> {
    checkId(id);
    const cg = await readCgroupStats(cgroupsPathFor(id));
    let diskUsedBytes = 0;
    let diskTotalBytes = 0;
    try {
      const st = await fsp.stat(this.files(id).disk);
      diskTotalBytes = st.size;
      diskUsedBytes = st.blocks * 512;
    } catch {
      /* being destroyed */
    }
    return { ...cg, diskUsedBytes, diskTotalBytes };
  }

  private async startNetwork(id: string, qemuPid: number, spec: NetworkSpec): Promise<void> {
    if (spec.mode !== 'gateway') return;
    const f = this.files(id);
    const started = performance.now();
    await startRelay({
      id,
      initPid: qemuPid,
      gateway: spec.gateway,
      procsFile: null,
      launcher: null,
      control: f.control,
      pidFile: f.relayPid,
      tap: { name: TAP_NAME, guest: GUEST_ADDR },
      ...(this.opts.netRelay ? { binary: this.opts.netRelay } : {}),
    });
    this.log.info({ id, ms: Math.round(performance.now() - started) }, 'microVM network relay started');
  }

  /**
   * A VM booted with a network device: make sure its relay runs (started again after a daemon restart or
   * when it died). A VM booted without one (network `none`) cannot get one later: no NIC hotplug on
   * `-M microvm`, so this refuses; create the sandbox with egress instead.
   */
  async attachNetwork(id: string, spec: NetworkSpec): Promise<void> {
    checkId(id);
    if (spec.mode === 'none') return;
    const f = this.files(id);
    if (relayPid(f.relayPid) !== null) return;
    if (!fs.existsSync(f.net)) {
      throw new ConflictError(
        `microVM ${id} was booted without a network device (network none), and a VM cannot get one later: create the sandbox with egress (or public ports) to use its network`,
        { id, backend: this.kind },
      );
    }
    const pid = this.qemuPid(id);
    if (pid === null) throw new ConflictError(`sandbox ${id} is not running: cannot set up its network`, { id });
    await this.startNetwork(id, pid, spec);
  }

  connectPort(id: string, port: number, signal?: AbortSignal): Promise<Duplex> {
    checkId(id);
    return connectThroughRelay(this.files(id).control, id, port, signal);
  }

  update(id: string, _resources: Partial<CgroupLimits>): Promise<void> {
    return this.unsupported(id, 'updateResources', 'change the limits of a running sandbox (a VM is sized at boot)');
  }



  /** Close the relays (VMs keep running; a restarted daemon reconnects). */
  async close(): Promise<void> {
    for (const r of this.relays.values()) r.close();
    this.relays.clear();
  }

  private async hasSwapAccounting(): Promise<boolean> {
    if (this.swapAccounting !== null) return this.swapAccounting;
    const mem = (await cgroupMounts()).find((m) => m.version === 1 && m.controllers.includes('memory'));
    this.swapAccounting = mem ? fs.existsSync(path.join(mem.mountPoint, 'memory.memsw.limit_in_bytes')) : true;
    return this.swapAccounting;
  }
}

/**
 * The host uid (and gid) a sandbox's QEMU runs as once started: one per sandbox, outside the range
 * container sandboxes map to (idMapBase..+idMapSize), derived from the id (FNV-1a into 2^20 values).
 */
export function qemuUid(id: string): number {
  let h = 0x811c9dc5;
  for (const ch of Buffer.from(id)) h = Math.imul(h ^ ch, 0x01000193) >>> 0;
  return QEMU_UID_BASE + (h & 0xfffff);
}

/** Whether pid is a live QEMU (not a recycled pid, not a zombie). */
function isQemu(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (/\) Z /.test(stat)) return false;
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('qemu');
  } catch {
    return false;
  }
}

/** p, or a rejection as soon as signal aborts (p goes on: a template image build is cached for the next create). */
function untilAborted<T>(p: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return p;
  signal.throwIfAborted();
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason)));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/** Keep draining QEMU's output (the guest console and QEMU's errors); return a reader of its tail. */
function collectTail(child: ChildProcess): () => string {
  let tail = '';
  const add = (b: Buffer) => {
    tail = (tail + b.toString('utf8')).slice(-CONSOLE_TAIL);
  };
  child.stdout?.on('data', add);
  child.stderr?.on('data', add);
  return () => tail;
}
