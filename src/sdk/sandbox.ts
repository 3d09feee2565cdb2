/**
 * The Sandbox class: create, connect to, list and kill sandboxes. Commands
 * and files hang off an instance as `sandbox.commands` and `sandbox.files`.
 */
import { NotFoundError } from '../errors/index.js';
import {
  ListSandboxesResponse,
  Sandbox as SandboxSchema,
  type Sandbox as SandboxInfo,
} from '../schemas/index.js';

type SandboxState = SandboxInfo['state'];
import { Commands } from './commands.js';
import { Files } from './files.js';
import { HttpClient } from './http.js';
import { pickConnection, resolveConnection, type ConnectionOptions } from './options.js';

export interface CreateOptions extends ConnectionOptions {
  /** Template to start from; default: the daemon's default ('debian'). */
  template?: string;
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
}

export interface ListOptions extends ConnectionOptions {
  /** Only sandboxes in this state, or 'all'; default: creating and running. */
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
  /** Read and write the sandbox's files. */
  readonly files: Files;

  private constructor(
    private readonly http: HttpClient,
    private info: SandboxInfo,
  ) {
    this.commands = new Commands(http, info.id);
    this.files = new Files(http, info.id);
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
      timeoutMs: opts.timeoutMs,
      envs: opts.envs,
      metadata: opts.metadata,
      resources: opts.resources,
      isolation: opts.isolation,
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

  /** Kill the sandbox and everything in it. Idempotent. */
  async kill(): Promise<SandboxInfo> {
    this.info = await this.http.json('DELETE', sandboxPath(this.id), SandboxSchema);
    return this.info;
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
