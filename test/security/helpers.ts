/**
 * Shared by the escape and abuse battery (test/security/*.test.ts):
 *
 * - one real daemon per test file (`startBattery`), every sandbox it made killed in `after`;
 * - `sh` / `probe`: run a shell command or one of the static C probes inside a sandbox;
 * - `buildProbes` / `uploadProbes`: compile test/security/probes/*.c on the host (static, musl or
 *   glibc) once per source hash, then upload them with the files API;
 * - `HostGuard`: a snapshot of host state (hostname, mounts, /proc/sys values, kernel modules,
 *   a marker file, a victim process, the clock) that every attack asserts is unchanged;
 * - `attack`: `it()` plus that host check after the attack ran.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { api, authHeaders, removeDataDir, REPO_ROOT, startTestDaemon, tempDataDir, type TestDaemon } from '../helpers/daemon.js';
import { DEFAULT_KERNEL, findQemu } from '../../src/runtime/microvm/kernel.js';

export const PROBES_SRC = path.join(REPO_ROOT, 'test', 'security', 'probes');
export const PROBE_NAMES = ['kernel', 'procs', 'net', 'res'] as const;
export type ProbeName = (typeof PROBE_NAMES)[number];
/** Where probes live inside a sandbox. */
export const PROBE_DIR = '/probes';

export interface CommandResult {
  pid: number;
  exitCode: number;
  signal?: string;
  stdout: string;
  stderr: string;
  timedOut?: boolean;
}

export interface Battery {
  d: TestDaemon;
  url: string;
  /** The daemon's API port on the host's 127.0.0.1. */
  port: number;
  guard: HostGuard;
  sandboxes: string[];
  /** A secret only in the daemon's environment: it must never show up inside a sandbox. */
  daemonCanary: string;
  /** What every sandbox of this battery runs under (the daemon's default isolation). */
  isolation: BatteryIsolation;
}

// ---------------------------------------------------------------- daemon

export async function startBattery(isolation: BatteryIsolation = 'container', opts: { env?: Record<string, string> } = {}): Promise<Battery> {
  const guard = new HostGuard();
  const daemonCanary = `canary-${crypto.randomBytes(8).toString('hex')}`;
  const env: Record<string, string> = { CAPSULE_SECURITY_CANARY: daemonCanary, ...opts.env };
  let dataDir: string | undefined;
  if (isolation === 'microvm') {
    // Software emulation is test-only (ADR 0017); QEMU drops to its own uid, so the data dir must be traversable.
    env.CAPSULE_MICROVM_ALLOW_TCG = '1';
    dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
  }
  const started = await startTestDaemon({ env, args: ['--isolation', isolation], ...(dataDir ? { dataDir } : {}) });
  // startTestDaemon removes only data dirs it made itself: remove ours on stop too.
  const d: TestDaemon = dataDir
    ? {
        ...started,
        async stop(o = {}) {
          await started.stop(o);
          if (o.removeDataDir !== false) await removeDataDir(dataDir!);
        },
      }
    : started;
  const port = Number(new URL(d.url).port);
  guard.snapshot();
  return { d, url: d.url, port, guard, sandboxes: [], daemonCanary, isolation };
}

/** The isolation kinds the battery attacks. */
export const BATTERY_ISOLATIONS = ['container', 'gvisor', 'microvm'] as const;
export type BatteryIsolation = (typeof BATTERY_ISOLATIONS)[number];

function runscMissing(): string | false {
  try {
    execFileSync('runsc', ['--version'], { stdio: 'ignore' });
    return false;
  } catch {
    return 'needs runsc (apt-get install runsc, or capsule doctor --fix)';
  }
}

/** Why the microVM battery cannot run here (as test/integration/runtime/microvm.test.ts skips), or false. */
export function microvmMissing(): string | false {
  if (process.getuid?.() !== 0) return 'needs root';
  if (!findQemu()) return 'needs QEMU (apt-get install qemu-system-x86, or scripts/setup.sh)';
  const kernel = process.env.CAPSULE_MICROVM_KERNEL || DEFAULT_KERNEL;
  if (!fs.existsSync(kernel)) return `needs a guest kernel at ${kernel} (capsule doctor --fix, or scripts/setup.sh)`;
  return false;
}

export interface ForEachIsolationOptions {
  /**
   * Whether this file runs against microvm: true, or the reason it does not (a capability
   * the microVM backend lacks). Files say so explicitly; the default is a skip.
   */
  microvm?: true | string;
  /** A reason this file does not run against gVisor (a capability it lacks); default: it runs. */
  gvisor?: string;
}

/**
 * The same attacks against every isolation kind: `body` is a describe() body
 * that starts its battery with startBattery(isolation). CAPSULE_SECURITY_ISOLATION
 * (container, gvisor or microvm) narrows it to one kind.
 */
export function forEachIsolation(name: string, body: (isolation: BatteryIsolation) => void, opts: ForEachIsolationOptions = {}): void {
  const only = process.env.CAPSULE_SECURITY_ISOLATION;
  for (const isolation of BATTERY_ISOLATIONS) {
    if (only && only !== isolation) continue;
    let skip: string | false = false;
    if (isolation === 'gvisor') skip = opts.gvisor ? `gvisor: ${opts.gvisor}` : runscMissing();
    if (isolation === 'microvm') {
      const m = opts.microvm ?? 'not ported to microvm yet';
      skip = m === true ? microvmMissing() : `microvm: ${m}`;
    }
    // A microVM boots in 3-4 s under TCG and its CPU is emulated: give its hooks room.
    describe(`${name} [${isolation}]`, { skip, ...(isolation === 'microvm' ? { timeout: 10 * 60_000 } : {}) }, () => body(isolation));
  }
}

/**
 * The outcome an attack has under each isolation kind, where they differ (README/SECURITY.md list why).
 * `microvm` is needed only in files that run against it; a missing one fails the test.
 */
export function per<T>(b: Battery, outcomes: { container: T; gvisor: T; microvm?: T }): T {
  if (b.isolation === 'microvm' && !('microvm' in outcomes)) throw new Error('per(): no expectation for microvm');
  return outcomes[b.isolation] as T;
}

export async function stopBattery(b: Battery | undefined): Promise<void> {
  if (!b) return;
  await Promise.all(b.sandboxes.map((id) => fetch(`${b.url}/v1/sandboxes/${id}`, { method: 'DELETE', headers: authHeaders(b.url) }).catch(() => undefined)));
  await b.d.stop();
  b.guard.dispose();
}

export interface SandboxOptions {
  envs?: Record<string, string>;
  resources?: { cpus?: number; memoryMb?: number; pids?: number; diskMb?: number };
  /** Upload these probes to /probes after creating it; default all. */
  probes?: readonly ProbeName[];
  /** The create's network settings (egress policy, public ports). */
  network?: Record<string, unknown>;
  template?: string;
}

export async function createSandbox(b: Battery, opts: SandboxOptions = {}): Promise<string> {
  const body: Record<string, unknown> = { template: opts.template ?? 'busybox', timeoutMs: 600_000 };
  if (opts.envs) body.envs = opts.envs;
  if (opts.network) body.network = opts.network;
  if (opts.resources) body.resources = opts.resources;
  const r = await api(b.url, 'POST', '/v1/sandboxes', body);
  assert.equal(r.status, 201, `create sandbox: ${r.text}\n${b.d.log().slice(-2000)}`);
  const id = r.json.id as string;
  b.sandboxes.push(id);
  await uploadProbes(b, id, opts.probes ?? PROBE_NAMES);
  return id;
}

export interface ShOptions {
  user?: string;
  timeoutMs?: number;
  envs?: Record<string, string>;
  stdin?: string;
  background?: boolean;
}

/** Run a shell command in the sandbox and return the buffered result. */
export async function sh(b: Battery, id: string, cmd: string | string[], opts: ShOptions = {}): Promise<CommandResult> {
  const r = await api(b.url, 'POST', `/v1/sandboxes/${id}/commands`, {
    cmd,
    timeoutMs: opts.timeoutMs ?? 30_000,
    maxOutputBytes: 256 * 1024,
    ...(opts.user ? { user: opts.user } : {}),
    ...(opts.envs ? { envs: opts.envs } : {}),
    ...(opts.stdin !== undefined ? { stdin: opts.stdin } : {}),
    ...(opts.background ? { background: true } : {}),
  });
  assert.equal(r.status, opts.background ? 202 : 200, `command ${JSON.stringify(cmd)}: ${r.status} ${r.text}`);
  return r.json as CommandResult;
}

/** Run a probe action; returns its stdout lines (one result per line). */
export async function probe(b: Battery, id: string, name: ProbeName, args: string[], opts: ShOptions = {}): Promise<string[]> {
  const r = await sh(b, id, [`${PROBE_DIR}/${name}`, ...args], opts);
  assert.ok(r.exitCode === 0 || r.exitCode === 1, `${name} ${args.join(' ')} exited ${r.exitCode}: ${r.stdout}${r.stderr}`);
  return r.stdout.split('\n').filter((l) => l !== '');
}

/** The single result line of a one-syscall probe action: "OK" or an errno name. */
export async function probe1(b: Battery, id: string, name: ProbeName, args: string[], opts: ShOptions = {}): Promise<string> {
  const lines = await probe(b, id, name, args, opts);
  assert.equal(lines.length, 1, `${name} ${args.join(' ')} printed ${JSON.stringify(lines)}`);
  return lines[0]!;
}

export async function putFile(b: Battery, id: string, p: string, body: Uint8Array | string, mode?: string) {
  const q = `path=${encodeURIComponent(p)}${mode ? `&mode=${mode}` : ''}`;
  return api(b.url, 'PUT', `/v1/sandboxes/${id}/files?${q}`, body, { 'content-type': 'application/octet-stream' });
}

export async function getFile(b: Battery, id: string, p: string): Promise<{ status: number; bytes: Buffer }> {
  const r = await fetch(`${b.url}/v1/sandboxes/${id}/files?path=${encodeURIComponent(p)}`, { headers: authHeaders(b.url) });
  return { status: r.status, bytes: Buffer.from(await r.arrayBuffer()) };
}

/** The daemon still serves its API (health check after an abuse attempt). */
export async function assertDaemonAnswers(b: Battery): Promise<void> {
  const r = await api(b.url, 'GET', '/v1/sandboxes');
  assert.equal(r.status, 200, `daemon stopped answering: ${r.text}`);
}

/** The sandbox still runs commands. */
export async function assertSandboxUsable(b: Battery, id: string): Promise<void> {
  const r = await sh(b, id, 'echo alive');
  assert.equal(r.stdout, 'alive\n', `sandbox ${id} is no longer usable: ${JSON.stringify(r)}`);
}

// ---------------------------------------------------------------- probes

let built: Record<ProbeName, string> | null = null;

/** Compile every probe (static) into a cache dir keyed by the sources' hash; returns host paths. */
export function buildProbes(): Record<ProbeName, string> {
  if (built) return built;
  const files = fs.readdirSync(PROBES_SRC).filter((f) => f.endsWith('.c') || f.endsWith('.h')).sort();
  const h = crypto.createHash('sha256');
  for (const f of files) h.update(f).update(fs.readFileSync(path.join(PROBES_SRC, f)));
  const dir = path.join(os.tmpdir(), `capsule-security-probes-${h.digest('hex').slice(0, 16)}`);
  const out = {} as Record<ProbeName, string>;
  for (const name of PROBE_NAMES) {
    const bin = path.join(dir, name);
    out[name] = bin;
    if (fs.existsSync(bin)) continue;
    fs.mkdirSync(dir, { recursive: true });
    const tmp = `${bin}.tmp-${process.pid}`;
    const src = path.join(PROBES_SRC, `${name}.c`);
    let lastErr: unknown;
    for (const cc of ['musl-gcc', 'gcc']) {
      try {
        execFileSync(cc, ['-static', '-O1', '-Wall', '-o', tmp, src], { stdio: 'pipe' });
        lastErr = undefined;
        break;
      } catch (e) {
        lastErr = e;
      }
    }
    if (lastErr) {
      const err = lastErr as { stderr?: Buffer; message: string };
      throw new Error(`cannot build probe ${name} (install musl-tools or gcc with a static libc): ${err.stderr?.toString() ?? err.message}`);
    }
    fs.renameSync(tmp, bin);
  }
  built = out;
  return out;
}

export async function uploadProbes(b: Battery, id: string, names: readonly ProbeName[] = PROBE_NAMES): Promise<void> {
  const bins = buildProbes();
  for (const n of names) {
    const r = await putFile(b, id, `${PROBE_DIR}/${n}`, fs.readFileSync(bins[n]), '755');
    assert.equal(r.status, 200, `upload probe ${n}: ${r.text}`);
  }
}

// ---------------------------------------------------------------- host state

/** Host /proc/sys values a sandbox must never change. */
export const WATCHED_SYSCTLS = [
  'kernel/hostname',
  'kernel/domainname',
  'kernel/core_pattern',
  'kernel/modprobe',
  'kernel/panic',
  'kernel/randomize_va_space',
  'kernel/dmesg_restrict',
  'kernel/kptr_restrict',
  'kernel/perf_event_paranoid',
  'vm/overcommit_memory',
  'net/ipv4/ip_forward',
  'net/ipv4/ping_group_range',
  'fs/suid_dumpable',
];

/** Host /sys values likewise. */
export const WATCHED_SYSFS = [
  '/sys/kernel/uevent_helper',
  '/sys/kernel/mm/transparent_hugepage/enabled',
  '/sys/class/net/lo/mtu',
];

function readOr(p: string, dflt: string): string {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return dflt;
  }
}

export interface MountEntry {
  mountPoint: string;
  fsType: string;
  source: string;
}

export function hostMounts(): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    if (!line) continue;
    const [left, right] = line.split(' - ');
    const f = (left ?? '').split(' ');
    const r = (right ?? '').split(' ');
    out.push({ mountPoint: f[4] ?? '', fsType: r[0] ?? '', source: r[1] ?? '' });
  }
  return out;
}

/**
 * Mounts other processes legitimately add or remove while the battery runs
 * (other test files, other daemons on this host): sandbox overlays in capsule
 * data dirs (and in any data dir's sandboxes/sbx-* dirs), network-namespace files, crun's transient /tmp/crun.* mounts, and
 * anything inside a temporary directory created after the snapshot.
 * Everything else (/, /proc, /sys, /etc, /tmp itself, pre-existing dirs) must stay put.
 */
function isForeignMount(m: MountEntry, tmpEntriesAtSnapshot: Set<string>): boolean {
  if (/capsule/i.test(m.mountPoint)) return true;
  // A sandbox's disk and root of any daemon on this host, wherever its data dir is (e.g. /tmp/prof/data).
  if (/\/sandboxes\/sbx-[a-z0-9]+(\/|$)/.test(m.mountPoint)) return true;
  if (m.fsType === 'nsfs' && m.mountPoint.startsWith('/run/')) return true;
  const tmp = os.tmpdir();
  if (m.mountPoint.startsWith(`${tmp}/`)) {
    const top = m.mountPoint.slice(tmp.length + 1).split('/')[0]!;
    if (/^(crun|runc)[.-]/.test(top) || !tmpEntriesAtSnapshot.has(top)) return true;
  }
  return false;
}

function mountKey(m: MountEntry): string {
  return `${m.mountPoint} ${m.fsType} ${m.source}`;
}

function listDir(p: string): string[] {
  try {
    return fs.readdirSync(p).sort();
  } catch {
    return [];
  }
}

interface Snapshot {
  hostname: string;
  sysctls: Record<string, string>;
  sysfs: Record<string, string>;
  mounts: string[];
  modules: string[];
  procModules: string;
  marker: string;
  wallMinusMono: number;
}

/**
 * A victim process on the host and a marker file, plus everything in
 * `Snapshot`. `check()` lists what changed since `snapshot()`.
 */
export class HostGuard {
  readonly markerPath: string;
  readonly markerContent: string;
  readonly victim: ChildProcess;
  private before: Snapshot | null = null;
  private tmpEntries = new Set<string>();

  constructor() {
    this.markerPath = path.join(os.tmpdir(), `capsule-sec-marker-${process.pid}-${crypto.randomBytes(4).toString('hex')}`);
    this.markerContent = `HOST MARKER ${crypto.randomBytes(8).toString('hex')}\n`;
    fs.writeFileSync(this.markerPath, this.markerContent, { mode: 0o644 });
    this.victim = spawn('sleep', ['3600'], { stdio: 'ignore' });
  }

  get victimPid(): number {
    return this.victim.pid!;
  }

  private take(): Snapshot {
    const sysctls: Record<string, string> = {};
    for (const k of WATCHED_SYSCTLS) sysctls[k] = readOr(`/proc/sys/${k}`, '<absent>');
    const sysfs: Record<string, string> = {};
    for (const k of WATCHED_SYSFS) sysfs[k] = readOr(k, '<absent>');
    return {
      hostname: os.hostname(),
      sysctls,
      sysfs,
      mounts: hostMounts()
        .filter((m) => !isForeignMount(m, this.tmpEntries))
        .map(mountKey)
        .sort(),
      modules: listDir('/sys/module'),
      procModules: readOr('/proc/modules', '<absent>')
        .split('\n')
        .map((l) => l.split(' ')[0])
        .sort()
        .join(','),
      marker: readOr(this.markerPath, '<missing>'),
      wallMinusMono: Date.now() - performance.now(),
    };
  }

  snapshot(): void {
    this.tmpEntries = new Set(listDir(os.tmpdir()));
    this.before = this.take();
  }

  victimAlive(): boolean {
    if (this.victim.exitCode !== null || this.victim.signalCode !== null) return false;
    try {
      process.kill(this.victimPid, 0);
      return true;
    } catch {
      return false;
    }
  }

  /** What changed on the host since snapshot(); empty when nothing did. */
  check(): string[] {
    assert.ok(this.before, 'HostGuard.snapshot() was not called');
    const a = this.before;
    const n = this.take();
    const diffs: string[] = [];
    if (n.hostname !== a.hostname) diffs.push(`hostname ${a.hostname} -> ${n.hostname}`);
    for (const k of Object.keys(a.sysctls)) {
      if (n.sysctls[k] !== a.sysctls[k]) diffs.push(`/proc/sys/${k}: ${JSON.stringify(a.sysctls[k])} -> ${JSON.stringify(n.sysctls[k])}`);
    }
    for (const k of Object.keys(a.sysfs)) {
      if (n.sysfs[k] !== a.sysfs[k]) diffs.push(`${k}: ${JSON.stringify(a.sysfs[k])} -> ${JSON.stringify(n.sysfs[k])}`);
    }
    const oldMounts = new Set(a.mounts);
    const newMounts = new Set(n.mounts);
    for (const m of n.mounts) if (!oldMounts.has(m)) diffs.push(`new host mount: ${m}`);
    for (const m of a.mounts) if (!newMounts.has(m)) diffs.push(`host mount gone: ${m}`);
    if (n.modules.join(',') !== a.modules.join(',')) diffs.push(`/sys/module changed: ${a.modules.length} -> ${n.modules.length} entries`);
    if (n.procModules !== a.procModules) diffs.push('/proc/modules changed');
    if (n.marker !== a.marker) diffs.push(`marker ${this.markerPath} changed: ${JSON.stringify(n.marker)}`);
    if (!this.victimAlive()) diffs.push(`host victim process ${this.victimPid} is gone (${this.victim.signalCode ?? this.victim.exitCode})`);
    // The wall clock minus the monotonic clock only moves when someone sets the time.
    const drift = Math.abs(n.wallMinusMono - a.wallMinusMono);
    if (drift > 5_000) diffs.push(`host wall clock jumped by ${Math.round(drift)} ms`);
    return diffs;
  }

  assertUnchanged(): void {
    assert.deepEqual(this.check(), [], 'the host changed');
  }

  dispose(): void {
    if (this.victimAlive()) this.victim.kill('SIGKILL');
    fs.rmSync(this.markerPath, { force: true });
  }
}

/**
 * One attack: a node:test `it` whose body runs the attack and asserts its
 * containment, after which the host must be unchanged.
 */
export function attack(
  getBattery: () => Battery,
  name: string,
  fn: () => Promise<void>,
  opts: { todo?: string; timeout?: number } = {},
): void {
  it(name, { ...(opts.todo ? { todo: opts.todo } : {}), timeout: opts.timeout ?? 60_000 }, async () => {
    await fn();
    getBattery().guard.assertUnchanged();
  });
}

// ---------------------------------------------------------------- host views of a sandbox

/** Host pids in a sandbox's cgroup (pids controller, cgroup v1 or v2). */
export function sandboxHostPids(id: string): number[] {
  for (const p of [`/sys/fs/cgroup/pids/capsule/${id}/cgroup.procs`, `/sys/fs/cgroup/capsule/${id}/cgroup.procs`]) {
    const t = readOr(p, '');
    if (t) return t.split('\n').filter(Boolean).map(Number);
  }
  return [];
}

/** Host pids of the sandbox's processes whose command line contains `needle`. */
export function sandboxHostPidsMatching(id: string, needle: string): number[] {
  return sandboxHostPids(id).filter((pid) => readOr(`/proc/${pid}/cmdline`, '').replace(/\0/g, ' ').includes(needle));
}

export function sleepMs(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
