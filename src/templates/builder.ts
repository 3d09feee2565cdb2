/**
 * Turns a template definition into a chain of layers.
 *
 * Each step that changes files (run, apt, npm, copy) becomes one layer whose
 * digest hashes its parent, the step and what the step sees (env, workdir,
 * user; for a copy, the archive's own digest): an unchanged definition is all
 * cache hits, a changed step k rebuilds k and everything after it, and two
 * definitions sharing a prefix share those layers on disk. env, workdir and
 * user steps make no layer; they change the keys of the steps after them and
 * become the template's config.
 *
 * run, apt and npm steps run in a build sandbox: the same runtime, isolation
 * and agent as any sandbox (never a shell on the host), stacked on the chain
 * so far, with build limits and a step timeout. Its changes are exported as
 * the step's layer (RuntimeDriver.exportChanges) and the sandbox is removed.
 * A copy step unpacks the uploaded archive straight into a new layer.
 *
 * Past FLATTEN_DEPTH layers the chain is merged into one layer for the
 * sandboxes (the step layers stay cached for rebuilds).
 */
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { promisify } from 'node:util';
import type { ResourceLimits } from '../config/index.js';
import { CapsuleError, InvalidArgumentError, SandboxError, UnsupportedError } from '../errors/index.js';
import type { SandboxNetworking } from '../network/service.js';
import type { NetworkConfig } from '../schemas/network.js';
import { backendFor } from '../runtime/backends.js';
import type { LayerRef, RuntimeDriver } from '../runtime/types.js';
import type { AgentConnector, Logger } from '../sandboxes/manager.js';
import { containerSpec, requireCapability } from '../sandboxes/spec.js';
import { buildEnv } from '../sandboxes/paths.js';
import { applyTar } from '../layers/apply-tar.js';
import { copyTree } from '../layers/native.js';
import { layerDigest, type LayerStore } from '../layers/store.js';
import type { TemplateConfig, TemplateDefinition, TemplateStep } from '../schemas/templates.js';
import type { BlobStore } from './blobs.js';
import { removeBuildTraces } from './build-traces.js';

const execFileP = promisify(execFile);

/**
 * Chains deeper than this are merged into one layer for the sandboxes. Measured here (cold cache, 2,000
 * stats of files in the lowest layer): 18.9 ms at depth 1, 21.4 at 32, 25.0 at 64, 30.7 at 128; warm
 * lookups do not change with depth. Past 32 a sandbox's cold start pays more than a merged copy costs.
 */
export const FLATTEN_DEPTH = 32;

/** Key format version: bump to invalidate every cached step layer. */
const KEY_VERSION = 1;

/** One layer of a chain: its identity and its tree on disk. */
export interface ChainLayer {
  /** `sha256:…` for store layers, `builtin:<name>@<builtAt>` for a built-in template's base tree. */
  id: string;
  path: string;
}

export interface BuildStart {
  chain: ChainLayer[];
  config: TemplateConfig;
}

export interface BuildReporter {
  progress(step: number, steps: number, phase: string, cached?: boolean): void;
  log(step: number, data: string): void;
}

export interface BuilderDeps {
  /**
   * The daemon's runtime (its backend set): build sandboxes are always made on
   * the `container` backend (they need exportChanges and egress), whatever the
   * default isolation, and their verbs are routed there by id.
   */
  runtime: RuntimeDriver;
  connectAgent: AgentConnector;
  layers: LayerStore;
  blobs: BlobStore;
  idMapBase: number;
  idMapSize: number;
  log: Logger;
  /** Limits of build sandboxes. */
  resources: ResourceLimits;
  /** Longest a run/apt/npm step may take (default 30 min). */
  stepTimeoutMs?: number;
  /**
   * Egress for package steps, through the same policy machinery as any sandbox (src/network).
   * Without it apt and npm steps answer `unsupported`.
   */
  networking?: SandboxNetworking;
  /** The only destinations package steps may reach: the host's Debian mirrors, the npm registry. */
  packageHosts?: () => Promise<{ apt: string[]; npm: string[] }>;
}

export interface BuildResult {
  /** The chain a sandbox stacks (merged past FLATTEN_DEPTH). */
  chain: ChainLayer[];
  config: TemplateConfig;
  cacheHits: number;
}

/** A step that ran and failed: which one, how, and the end of its output. */
export class BuildStepError extends SandboxError {
  constructor(step: number, describe: string, why: string, logTail: string) {
    super(`step ${step} (${describe}) ${why}${logTail ? `; last output:\n${logTail}` : ''}`, { step });
    this.name = 'BuildStepError';
  }
}

export function describeStep(s: TemplateStep): string {
  switch (s.type) {
    case 'run':
      return `run: ${s.command.length > 80 ? `${s.command.slice(0, 77)}...` : s.command}`;
    case 'apt':
      return `apt: ${s.packages.join(' ')}`.slice(0, 120);
    case 'npm':
      return `npm${s.global ? ' -g' : ''}: ${s.packages.join(' ')}`.slice(0, 120);
    case 'copy':
      return `copy ${s.source.slice(0, 19)}… to ${s.dest}`;
    case 'env':
      return `env: ${Object.keys(s.vars).join(', ')}`;
    case 'workdir':
      return `workdir ${s.path}`;
    case 'user':
      return `user ${s.user}`;
  }
}

/** The shell command of a step that runs in a build sandbox. */
function stepCommand(s: Extract<TemplateStep, { type: 'run' | 'apt' | 'npm' }>): string {
  const q = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;
  switch (s.type) {
    case 'run':
      return s.command;
    case 'apt':
      return [
        'set -e',
        'export DEBIAN_FRONTEND=noninteractive',
        'apt-get update -qq',
        `apt-get install -y -qq --no-install-recommends ${s.packages.map(q).join(' ')}`,
        'apt-get clean',
        'rm -rf /var/lib/apt/lists/*',
      ].join('\n');
    case 'npm':
      return [
        'set -e',
        'command -v npm >/dev/null 2>&1 || { echo "npm is not in this template: install nodejs and npm first (an apt step)" >&2; exit 127; }',
        `npm install --no-audit --no-fund ${s.global ? '-g ' : ''}${s.packages.map(q).join(' ')}`,
      ].join('\n');
  }
}

/** Keeps the last `max` bytes of a step's output, for the error a failing step reports. */
class Tail {
  private text = '';
  constructor(private readonly max: number) {}
  push(s: string): void {
    this.text = (this.text + s).slice(-this.max);
  }
  lines(n: number): string {
    return this.text.split('\n').slice(-n - 1).join('\n').trim();
  }
}

export class TemplateBuilder {
  constructor(private readonly deps: BuilderDeps) {}

  /** Give package steps egress (the network service is made after the builder, next to the sandbox service). */
  useNetworking(networking: SandboxNetworking, packageHosts: () => Promise<{ apt: string[]; npm: string[] }>): void {
    this.deps.networking = networking;
    this.deps.packageHosts = packageHosts;
  }

  async build(owner: string, start: BuildStart, def: TemplateDefinition, report: BuildReporter, signal: AbortSignal): Promise<BuildResult> {
    const steps = def.steps;
    let chain = [...start.chain];
    const config: TemplateConfig = { ...start.config, env: { ...start.config.env } };
    if (def.cmd !== undefined) config.cmd = def.cmd;
    let cacheHits = 0;
    for (let i = 0; i < steps.length; i++) {
      signal.throwIfAborted();
      const n = i + 1;
      const step = steps[i]!;
      const what = describeStep(step);
      if (step.type === 'env' || step.type === 'workdir' || step.type === 'user') {
        if (step.type === 'env') Object.assign(config.env, step.vars);
        else if (step.type === 'workdir') config.workdir = step.path;
        else config.user = step.user;
        report.progress(n, steps.length, `step ${n}/${steps.length}: ${what}`);
        continue;
      }
      const parent = chain[chain.length - 1]?.id ?? null;
      const key = layerDigest({
        v: KEY_VERSION,
        parent,
        step,
        ...(step.type === 'copy' ? {} : { env: config.env, workdir: config.workdir ?? null, user: config.user ?? null }),
      });
      if (this.deps.layers.has(key)) {
        cacheHits++;
        report.progress(n, steps.length, `step ${n}/${steps.length}: ${what} (cached)`, true);
        chain.push({ id: key, path: this.deps.layers.path(key) });
        continue;
      }
      report.progress(n, steps.length, `step ${n}/${steps.length}: ${what}`);
      const draft = await this.deps.layers.draft();
      try {
        if (step.type === 'copy') {
          const ids = await this.copyOwner(chain, step.owner);
          await applyTar(this.deps.blobs.open(owner, step.source), draft.dir, {
            idMapBase: this.deps.idMapBase,
            idMapSize: this.deps.idMapSize,
            prefix: step.dest,
            owner: ids,
            signal,
          });
        } else {
          await this.runStep(n, what, chain, config, step, draft.dir, report, signal);
        }
        await draft.commit({ digest: key, parent, kind: 'step', description: what });
      } catch (e) {
        await draft.abort();
        throw e;
      }
      chain.push({ id: key, path: this.deps.layers.path(key) });
    }
    chain = await this.bound(chain, (phase) => report.progress(steps.length, steps.length, phase), signal);
    return { chain, config, cacheHits };
  }

  /** The chain as a sandbox can stack it: merged into one layer when deeper than FLATTEN_DEPTH. */
  async bound(chain: ChainLayer[], phase: (p: string) => void, signal: AbortSignal): Promise<ChainLayer[]> {
    if (chain.length <= FLATTEN_DEPTH) return chain;
    phase(`merging ${chain.length} layers into one`);
    return [await this.flatten(chain, signal)];
  }

  /** Container ids of a copy step's owner: root by default, numbers as given, names from the chain's /etc/passwd. */
  private async copyOwner(chain: ChainLayer[], spec: string | undefined): Promise<{ uid: number; gid: number }> {
    if (spec === undefined || spec === 'root') return { uid: 0, gid: 0 };
    const [u, g] = spec.split(':') as [string, string | undefined];
    const uid = /^\d+$/.test(u) ? Number(u) : await lookupId(chain, 'etc/passwd', u);
    const gid = g === undefined ? (/^\d+$/.test(u) ? uid : await lookupId(chain, 'etc/passwd', u, 3)) : /^\d+$/.test(g) ? Number(g) : await lookupId(chain, 'etc/group', g);
    if (uid >= this.deps.idMapSize || gid >= this.deps.idMapSize) throw new InvalidArgumentError(`copy owner ${spec} is outside the sandbox's id range`);
    return { uid, gid };
  }

  private async runStep(
    n: number,
    what: string,
    chain: ChainLayer[],
    config: TemplateConfig,
    step: Extract<TemplateStep, { type: 'run' | 'apt' | 'npm' }>,
    dest: string,
    report: BuildReporter,
    signal: AbortSignal,
  ): Promise<void> {
    const { runtime } = this.deps;
    const backend = backendFor(runtime, 'container');
    requireCapability(backend, 'exportChanges', 'build a template step');
    // Package steps reach their mirrors and nothing else; run steps have no network at all.
    let network: NetworkConfig | undefined;
    if (step.type !== 'run') {
      const { networking, packageHosts } = this.deps;
      if (!networking || !packageHosts) {
        throw new UnsupportedError(`step ${n} (${what}) needs egress to the package mirror, which this daemon cannot give a sandbox; use a run step, or a base that has the packages`, { step: n });
      }
      const hosts = await packageHosts();
      const allow = step.type === 'apt' ? hosts.apt : hosts.npm;
      if (allow.length === 0) throw new UnsupportedError(`step ${n} (${what}): this host names no ${step.type === 'apt' ? 'Debian mirror' : 'npm registry'} to allow`, { step: n });
      network = { egress: { allow } };
    }
    const { networking } = this.deps;
    const id = `bld-${randomBytes(6).toString('hex')}`;
    // Package steps install for the whole system, as root; run steps run as the template's user so far.
    const stepUser = step.type === 'run' ? config.user : undefined;
    const layers: LayerRef[] = chain.map((l) => ({ path: l.path, digest: l.id }));
    const spec = {
      ...containerSpec(backend, id, layers, this.deps.resources, network ? networking!.specFor(network, backend) : undefined, { allowSetuid: config.sudo }),
      isolation: 'container' as const,
    };
    let created = false;
    const tail = new Tail(8192);
    try {
      if (network) networking!.register(id, network);
      await runtime.create(spec, signal);
      created = true;
      const conn = await this.deps.connectAgent(runtime.agentEndpoint(id), { timeoutMs: 10_000, signal, sandboxId: id });
      try {
        if (network) await networking!.ready(id, conn, signal);
        const proc = await conn.exec({
          argv: ['/bin/sh', '-c', stepCommand(step)],
          env: buildEnv(config.env, undefined, stepUser),
          ...(config.workdir ? { cwd: config.workdir } : {}),
          ...(stepUser ? { user: stepUser } : {}),
          stdin: false,
        });
        const decoders = { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') };
        const onOut = (stream: 'stdout' | 'stderr') => (chunk: Buffer) => {
          const text = decoders[stream].write(chunk);
          if (!text) return;
          tail.push(text);
          report.log(n, text);
        };
        proc.on('stdout', onOut('stdout'));
        proc.on('stderr', onOut('stderr'));
        const limit = this.deps.stepTimeoutMs ?? 30 * 60_000;
        let timedOut = false;
        const timer = setTimeout(() => {
          timedOut = true;
          void proc.signal('SIGKILL').catch(() => undefined);
        }, limit);
        const onAbort = () => void proc.signal('SIGKILL').catch(() => undefined);
        signal.addEventListener('abort', onAbort, { once: true });
        let status;
        try {
          status = await proc.exited;
        } finally {
          clearTimeout(timer);
          signal.removeEventListener('abort', onAbort);
        }
        signal.throwIfAborted();
        if (timedOut) throw new BuildStepError(n, what, `ran past its ${Math.round(limit / 1000)} s limit and was killed`, tail.lines(20));
        if (status.exitCode !== 0) throw new BuildStepError(n, what, `exited with ${status.exitCode}${status.signal ? ` (${status.signal})` : ''}`, tail.lines(20));
        await runtime.exportChanges(id, dest, signal);
        // The resolver the network service wrote for the build, and the build sandbox's name in /etc/hosts,
        // are not part of the template.
        await removeBuildTraces(dest, { resolver: network !== undefined });
      } finally {
        conn.close();
      }
    } catch (e) {
      if (e instanceof CapsuleError) throw e;
      throw new SandboxError(`step ${n} (${what}) failed: ${e instanceof Error ? e.message : String(e)}`, { step: n });
    } finally {
      // Idempotent, and also what a create cut off by the abort left behind.
      void created;
      if (network) networking!.ended(id);
      await runtime.destroy(id).catch((err: unknown) => this.deps.log.error({ err, id }, 'removing a build sandbox failed; the next start removes it'));
    }
  }

  /** One layer holding the whole merged tree of `chain` (read through a read-only overlay of it). */
  private async flatten(chain: ChainLayer[], signal: AbortSignal): Promise<ChainLayer> {
    const key = layerDigest({ v: KEY_VERSION, flatten: chain.map((l) => l.id) });
    if (this.deps.layers.has(key)) return { id: key, path: this.deps.layers.path(key) };
    const draft = await this.deps.layers.draft();
    const mnt = await fsp.mkdtemp(path.join(os.tmpdir(), 'capsule-flatten-'));
    let mounted = false;
    try {
      const lowers = [...chain].reverse().map((l) => l.path).join(':');
      await execFileP('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${lowers}`, mnt], { timeout: 60_000 });
      mounted = true;
      await copyTree(mnt, draft.dir, signal);
      await draft.commit({ digest: key, parent: null, kind: 'flatten', description: `${chain.length} layers merged` });
      return { id: key, path: this.deps.layers.path(key) };
    } catch (e) {
      await draft.abort();
      throw e;
    } finally {
      if (mounted) await execFileP('umount', [mnt]).catch(() => execFileP('umount', ['-l', mnt]));
      await fsp.rmdir(mnt).catch(() => undefined);
    }
  }
}

/** A user's or group's id from the topmost layer of `chain` that has the file (field 2 or `field`). */
async function lookupId(chain: ChainLayer[], file: string, name: string, field = 2): Promise<number> {
  for (let i = chain.length - 1; i >= 0; i--) {
    const p = path.join(chain[i]!.path, file);
    let text: string;
    try {
      const st = await fsp.lstat(p);
      if (!st.isFile() || st.size > 1024 * 1024) continue;
      text = await fsp.readFile(p, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      const f = line.split(':');
      if (f[0] === name && f[field] !== undefined && /^\d+$/.test(f[field]!)) return Number(f[field]);
    }
    break; // the topmost copy of the file is the one a sandbox sees
  }
  throw new InvalidArgumentError(`no ${file.endsWith('group') ? 'group' : 'user'} named ${name} in the template so far`);
}
