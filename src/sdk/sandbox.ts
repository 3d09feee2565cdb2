/**
 * The Sandbox class: create, connect to, list and kill sandboxes. Commands
 * and files hang off an instance as `sandbox.commands` and `sandbox.files`.
 */
import type { z } from 'zod';
import { NotFoundError } from '../errors/index.js';
import {
  MetricsResponse,
  SandboxLogResponse,
  type SandboxLogLevel,
  type SandboxMetric,
  ListSandboxesResponse,
  ForkSandboxResponse,
  Sandbox as SandboxSchema,
  type Lifecycle,
  type Sandbox as SandboxInfo,
} from '../schemas/index.js';

type SandboxState = SandboxInfo['state'];
import { Commands } from './commands.js';
import { CodeInterpreter, type CodeContext, type CreateCodeContextOptions, type Execution, type RunCodeOptions } from './code.js';
import { Files } from './files.js';
import { Pty } from './pty.js';
import { Network } from './network.js';
import type { NetworkConfig } from '../schemas/index.js';
import { HttpClient } from './http.js';
import { takeSnapshot, type SnapshotInfo, type SnapshotOptions } from './snapshots.js';
import { pickConnection, resolveConnection, type ConnectionOptions } from './options.js';

export interface CreateOptions extends ConnectionOptions {
  /** Template to start from; default: the daemon's default ('debian'). Not with `snapshot`. */
  template?: string;
  /**
   * A filesystem snapshot (id or name, see `sandbox.snapshot()`) to start from: the template it was
   * taken on, its files, and its env, working directory and user. Not with `template`.
   */
  snapshot?: string;
  /** Lifetime in ms before the sandbox is killed; default 5 minutes. Extend it with setTimeout. */
  timeoutMs?: number;
  /** Environment variables every command in the sandbox gets. */
  envs?: Record<string, string>;
  /** Free-form labels; list() can filter on them. */
  metadata?: Record<string, string>;
  /** CPU (cores), memory (MiB), process and disk (MiB, ENOSPC past it) limits; defaults come from the daemon. */
  resources?: { cpus?: number; memoryMb?: number; pids?: number; diskMb?: number };
  /**
   * How the sandbox is kept apart from the host kernel: 'container' (namespaces and seccomp) or 'gvisor'
   * (gVisor's user-space kernel; slower system calls). Default: the daemon's. See `getDaemonInfo()` for
   * what the daemon has.
   */
  isolation?: SandboxInfo['isolation'];
  /**
   * What the timeout (or `idleMs` without API activity) does: `onTimeout` 'kill' (default), 'pause' or 'stop';
   * `autoResume`: commands and file calls wake a paused or stopped sandbox instead of failing with ConflictError;
   * `deleteAfterMs`: how long it is kept paused or stopped (the daemon's default is 7 days).
   */
  lifecycle?: Lifecycle;
  /** Named volumes (see `Volume.create`) to attach: `[{ name: 'data', path: '/data', readOnly: false }]`. */
  volumes?: Array<{ name: string; path: string; readOnly?: boolean }>;
  /**
   * Egress policy and public ports: `{ egress: 'none' | 'all' | { allow: [...], deny: [...] }, publicPorts: [3000] }`
   * (`publicPorts: 'all'`: every port's URL needs no token).
   * Default: no egress (loopback only).
   */
  network?: NetworkConfig;
}

export interface WakeOptions {
  /** Lifetime from now once it runs; default: what it had left when it was paused or stopped. */
  timeoutMs?: number;
}

export interface ListOptions extends ConnectionOptions {
  /** Only sandboxes in this state, or 'all'; default: every live one (running, paused, stopped, ...). */
  state?: SandboxState | 'all';
  /** Only sandboxes whose metadata has all of these key/value pairs. */
  metadata?: Record<string, string>;
}

function sandboxPath(id: string): string {
  return `/sandboxes/${encodeURIComponent(id)}`;
}

export class Sandbox {
  /** Run commands inside the sandbox. */
  readonly commands: Commands;
  /** Read and write the sandbox's files, and watch directories. */
  readonly files: Files;
  /** Terminals: interactive shells and programs. */
  readonly pty: Pty;
  /** Egress policy, egress ledger and port URLs. */
  readonly network: Network;
  private readonly code: CodeInterpreter;

  private constructor(
    private readonly http: HttpClient,
    private info: SandboxInfo,
  ) {
    this.commands = new Commands(http, info.id);
    this.files = new Files(http, info.id);
    this.pty = new Pty(http, encodeURIComponent(info.id));
    this.network = new Network(http, info.id);
    this.code = new CodeInterpreter(http, info.id);
  }

  /**
   * The host-routed URL of a port inside the sandbox, `http://<port>-<id>.localhost:<daemon port>/`
   * (browsers resolve *.localhost to loopback). It needs the port's token unless the port is public:
   * `network.port(port)` gives the token and a signed URL.
   */
  getHost(port: number): string {
    const u = new URL(this.http.conn.apiUrl);
    return `${u.protocol}//${port}-${this.id}.localhost:${u.port || (u.protocol === 'https:' ? 443 : 80)}/`;
  }

  /** Change the egress policy and/or public ports (same as `network.set`). */
  setNetwork(cfg: NetworkConfig) {
    return this.network.set(cfg);
  }

  /** Sandbox id, e.g. `sbx-4k2m9q0c7d1a`. */
  get id(): string {
    return this.info.id;
  }

  /** Start a new sandbox and resolve once it runs. */
  static async create(opts: CreateOptions = {}): Promise<Sandbox> {
    const http = new HttpClient(resolveConnection(pickConnection(opts)));
    const body = {
      template: opts.template,
      snapshot: opts.snapshot,
      timeoutMs: opts.timeoutMs,
      envs: opts.envs,
      metadata: opts.metadata,
      resources: opts.resources,
      isolation: opts.isolation,
      lifecycle: opts.lifecycle,
      volumes: opts.volumes,
      network: opts.network,
    };
    // Starting a container can take longer than an ordinary request.
    const timeoutMs = http.conn.requestTimeoutMs === 0 ? 0 : Math.max(http.conn.requestTimeoutMs, 120_000);
    const info = await http.json('POST', '/sandboxes', SandboxSchema, { json: body, timeoutMs });
    return new Sandbox(http, info);
  }

  /** Attach to an existing sandbox. NotFoundError if it does not exist. */
  static async connect(id: string, opts: ConnectionOptions = {}): Promise<Sandbox> {
    const http = new HttpClient(resolveConnection(pickConnection(opts)));
    const info = await http.json('GET', sandboxPath(id), SandboxSchema);
    return new Sandbox(http, info);
  }

  /** Sandboxes known to the daemon, optionally filtered by state and metadata. */
  static async list(opts: ListOptions = {}): Promise<SandboxInfo[]> {
    const http = new HttpClient(resolveConnection(pickConnection(opts)));
    const query: Array<[string, string]> = [];
    if (opts.state) query.push(['state', opts.state]);
    for (const [k, v] of Object.entries(opts.metadata ?? {})) query.push([`metadata.${k}`, v]);
    const res = await http.json('GET', '/sandboxes', ListSandboxesResponse, { query });
    return res.sandboxes;
  }

  /** Kill a sandbox by id without connecting first. Idempotent. */
  static async kill(id: string, opts: ConnectionOptions = {}): Promise<SandboxInfo> {
    const http = new HttpClient(resolveConnection(pickConnection(opts)));
    return http.json('DELETE', sandboxPath(id), SandboxSchema);
  }

  /** Fresh information about the sandbox (state, expiry, metadata...). */
  async getInfo(): Promise<SandboxInfo> {
    this.info = await this.http.json('GET', sandboxPath(this.id), SandboxSchema);
    return this.info;
  }

  /** Set the remaining lifetime to `timeoutMs` from now (extend or shorten). */
  async setTimeout(timeoutMs: number): Promise<SandboxInfo> {
    this.info = await this.http.json('POST', `${sandboxPath(this.id)}/timeout`, SandboxSchema, { json: { timeoutMs } });
    return this.info;
  }

  /**
   * Freeze every process (memory is kept, no CPU is used); the timeout clock
   * stops until resume. Commands and file calls then fail with ConflictError,
   * unless the sandbox was created with `lifecycle.autoResume`.
   *
   * `memory: 'disk'` hibernates instead: every process and its memory are written to disk and the
   * sandbox's memory is freed (state `hibernated`); `resume()` restores them, also after a daemon
   * restart. Needs `capabilities.memorySnapshot` (runc with CRIU 4 on the daemon's host).
   */
  async pause(opts: { memory?: 'keep' | 'disk' } = {}): Promise<SandboxInfo> {
    const disk = opts.memory === 'disk';
    this.info = await this.http.json('POST', `${sandboxPath(this.id)}/pause`, SandboxSchema, {
      ...(opts.memory !== undefined ? { json: { memory: opts.memory } } : {}),
      // Dumping and unmounting can outlast an ordinary request on a busy host.
      ...(disk ? { timeoutMs: this.longTimeout() } : {}),
    });
    return this.info;
  }

  /** Thaw a paused sandbox (restore a hibernated one): its processes continue where they were. */
  async resume(opts: WakeOptions = {}): Promise<SandboxInfo> {
    this.info = await this.http.json('POST', `${sandboxPath(this.id)}/resume`, SandboxSchema, { json: wakeBody(opts), timeoutMs: this.longTimeout() });
    return this.info;
  }

  /** End every process and free the memory, keeping the files (and envs, metadata, limits) for start(). */
  async stop(): Promise<SandboxInfo> {
    // Unmounting and writing back the disk can outlast an ordinary request on a busy host.
    this.info = await this.http.json('POST', `${sandboxPath(this.id)}/stop`, SandboxSchema, { timeoutMs: this.longTimeout() });
    return this.info;
  }

  /** Boot a stopped sandbox again: the same id and files, no processes but a fresh start. */
  async start(opts: WakeOptions = {}): Promise<SandboxInfo> {
    this.info = await this.http.json('POST', `${sandboxPath(this.id)}/start`, SandboxSchema, { json: wakeBody(opts), timeoutMs: this.longTimeout() });
    return this.info;
  }

  /**
   * A filesystem snapshot: a consistent copy of the sandbox's files (its processes are frozen while
   * they are copied; a paused sandbox stays paused), kept as an immutable layer. Start any number of
   * sandboxes from it with `Sandbox.create({ snapshot: info.id })` (or its name).
   */
  async snapshot(opts: SnapshotOptions = {}): Promise<SnapshotInfo> {
    return takeSnapshot(this.http, this.id, opts, this.longTimeout());
  }

  /**
   * Fork this running sandbox into `count` new ones (default 1), through a snapshot of its files. With
   * `memory: true` every fork continues from the same instant with this sandbox's processes and memory
   * (needs `capabilities.memorySnapshot`: a daemon on runc with CRIU 4), each with its own id, hostname and
   * copy-on-write files; this sandbox runs on. The forks get its resources, timeout, policy and metadata.
   */
  async fork(opts: { count?: number; memory?: boolean } = {}): Promise<Sandbox[]> {
    const count = opts.count ?? 1;
    const r = await this.http.json('POST', `${sandboxPath(this.id)}/fork`, ForkSandboxResponse, {
      json: { count, ...(opts.memory !== undefined ? { memory: opts.memory } : {}) },
      timeoutMs: this.longTimeout() === 0 ? 0 : this.longTimeout() + count * 30_000,
    });
    return r.sandboxes.map((info) => new Sandbox(this.http, info));
  }

  private longTimeout(): number {
    return this.http.conn.requestTimeoutMs === 0 ? 0 : Math.max(this.http.conn.requestTimeoutMs, 120_000);
  }

  /**
   * Run code in a stateful context, like a notebook cell: variables, imports and functions persist
   * between calls. Without `context`, the sandbox's default context of `language` (python) is used.
   * Resolves with stdout, stderr, rich results (text, html, png, ...) and the error, if the cell raised.
   */
  runCode(code: string, opts: RunCodeOptions = {}): Promise<Execution> {
    return this.code.run(code, opts);
  }

  /** A new interpreter (python, javascript, typescript or bash) whose state only its own runs see. */
  createCodeContext(opts: CreateCodeContextOptions = {}): Promise<CodeContext> {
    return this.code.createContext(opts);
  }

  listCodeContexts(): Promise<CodeContext[]> {
    return this.code.listContexts();
  }

  /** A fresh interpreter in the same context: every variable is gone. */
  restartCodeContext(context: CodeContext | string): Promise<CodeContext> {
    return this.code.restartContext(context);
  }

  /** End a context; its interpreter and whatever it started are killed. */
  removeCodeContext(context: CodeContext | string): Promise<void> {
    return this.code.removeContext(context);
  }

  /** Kill the sandbox and everything in it. Idempotent. */
  async kill(): Promise<SandboxInfo> {
    this.info = await this.http.json('DELETE', sandboxPath(this.id), SandboxSchema);
    this.commands.closeChannel();
    return this.info;
  }

  /**
   * Let go of this Sandbox object without touching the sandbox: closes its command channel (the one
   * WebSocket that `commands.run` keeps open). The sandbox keeps running; later calls still work, over HTTP.
   */
  close(): void {
    this.commands.closeChannel();
  }

  /**
   * CPU, memory, disk and pids samples the daemon took of this sandbox (every few seconds, kept for its
   * life, bounded), oldest first; `start` / `end` narrow the range.
   */
  async getMetrics(opts: { start?: Date; end?: Date } = {}): Promise<SandboxMetric[]> {
    const res = await this.http.json('GET', `${sandboxPath(this.id)}/metrics`, MetricsResponse, {
      query: { start: opts.start?.toISOString(), end: opts.end?.toISOString() },
    });
    return res.metrics;
  }

  /**
   * The sandbox's log, oldest first: lifecycle events (created, paused, resumed, stopped, killed, expired,
   * failed, timeouts) and commands (started, ended with exit code or signal, OOM kills). Pass the answer's
   * `cursor` as `since` for what comes next; `level` keeps that level and above. Works after it ended.
   */
  async logs(opts: { since?: number; limit?: number; level?: SandboxLogLevel } = {}): Promise<z.infer<typeof SandboxLogResponse>> {
    return this.http.json('GET', `${sandboxPath(this.id)}/logs`, SandboxLogResponse, {
      query: { since: opts.since, limit: opts.limit, level: opts.level },
    });
  }

  /** True while the sandbox runs; false once it ended or no longer exists. */
  async isRunning(): Promise<boolean> {
    try {
      return (await this.getInfo()).state === 'running';
    } catch (e) {
      if (e instanceof NotFoundError) return false;
      throw e;
    }
  }
}

function wakeBody(opts: WakeOptions): { timeoutMs?: number } {
  return opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {};
}
