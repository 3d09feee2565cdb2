/**
 * What the MCP tools need from Capsule, behind one small interface with two
 * implementations:
 *
 *  - `servicesBackend`: the daemon's own services, in process (the `/mcp`
 *    route of the daemon, and `capsule mcp --embedded`);
 *  - `sdkBackend`: a running daemon reached through the TypeScript SDK
 *    (`capsule mcp` against CAPSULE_URL / CAPSULE_API_KEY).
 *
 * The tool handlers only ever see this interface, so they neither know which
 * side they run on nor depend on the MCP SDK.
 */
import { Readable } from 'node:stream';
import type { ResourceLimits } from '../config/index.js';
import type { Isolation } from '../runtime/isolation.js';
import type { Services } from '../api/services.js';
import { ANONYMOUS_ADMIN, type Principal } from '../auth/principal.js';
import type { EventSink } from '../sandboxes/commands.js';
import { wireEvents } from '../sandboxes/output.js';
import { requestContext } from '../auth/context.js';
import { toApiSandbox } from '../api/routes/sandboxes.js';
import { PayloadTooLargeError } from '../errors/index.js';
import type { CodeLanguage, CommandResult, FileEntry, Lifecycle, NetworkConfig, NetworkLogEntry, PortAccess, RunCodeResult, Sandbox as SandboxInfo, SandboxLogQuery, SandboxLogResponse, SandboxNetwork, Snapshot as SnapshotInfo } from '../schemas/index.js';
import { Sandbox, Snapshot, type ConnectionOptions } from '../sdk/index.js';

export type SandboxState = SandboxInfo['state'];

export interface CreateSandboxInput {
  /** Not with `snapshot`. */
  template?: string | undefined;
  /** A filesystem snapshot (id or name) to start from. */
  snapshot?: string | undefined;
  timeoutMs?: number | undefined;
  envs?: Record<string, string> | undefined;
  metadata?: Record<string, string> | undefined;
  resources?: Partial<ResourceLimits> | undefined;
  isolation?: Isolation | undefined;
  lifecycle?: Lifecycle | undefined;
  network?: NetworkConfig | undefined;
}

export type LifecycleVerb = 'pause' | 'resume' | 'stop' | 'start';

export interface CommandInput {
  /** A shell string (run with /bin/sh -c) or an argv array. */
  cmd: string | string[];
  cwd?: string | undefined;
  user?: string | undefined;
  envs?: Record<string, string> | undefined;
  timeoutMs?: number | undefined;
  stdin?: string | undefined;
}

export interface CodeInput {
  code: string;
  language?: CodeLanguage | undefined;
  /** A context id; default: the sandbox's default context of the language. */
  context?: string | undefined;
  envs?: Record<string, string> | undefined;
  timeoutMs?: number | undefined;
}

export interface RunHooks {
  /** Output as it arrives, in order. */
  onOutput?: (stream: 'stdout' | 'stderr', data: string) => void;
  /** Aborting kills the command. */
  signal?: AbortSignal;
}

/**
 * How long a tool call waits for a template build before answering "still
 * building, try again" (the build goes on): under the minute most MCP clients
 * wait for a tool call. CAPSULE_MCP_TEMPLATE_WAIT_MS changes it (tests).
 */
export const MCP_TEMPLATE_WAIT_MS = Number(process.env.CAPSULE_MCP_TEMPLATE_WAIT_MS) > 0 ? Number(process.env.CAPSULE_MCP_TEMPLATE_WAIT_MS) : 40_000;

export interface McpBackend {
  createSandbox(input: CreateSandboxInput, signal?: AbortSignal): Promise<SandboxInfo>;
  getSandbox(id: string): Promise<SandboxInfo>;
  listSandboxes(filter: { state?: SandboxState | 'all' | undefined; metadata?: Record<string, string> | undefined }): Promise<SandboxInfo[]>;
  killSandbox(id: string): Promise<SandboxInfo>;
  setSandboxTimeout(id: string, timeoutMs: number): Promise<SandboxInfo>;
  /** Pause, resume, stop or start; `timeoutMs` only for resume and start, `memory` only for pause ('disk': hibernate). */
  lifecycle(id: string, verb: LifecycleVerb, opts: { timeoutMs?: number; memory?: 'keep' | 'disk' }): Promise<SandboxInfo>;
  /** A filesystem snapshot of the sandbox (src/snapshots). */
  snapshot(id: string, opts: { name?: string | undefined; metadata?: Record<string, string> | undefined }): Promise<SnapshotInfo>;
  listSnapshots(filter: { sandboxId?: string | undefined }): Promise<SnapshotInfo[]>;
  deleteSnapshot(ref: string): Promise<void>;
  /** Fork a running sandbox `count` times through a snapshot; `memory`: with its processes (capabilities.memorySnapshot). */
  fork(id: string, opts: { count: number; memory: boolean }): Promise<{ snapshotId: string; sandboxIds: string[] }>;
  runCommand(id: string, input: CommandInput, hooks?: RunHooks): Promise<CommandResult>;
  startCommand(id: string, input: CommandInput): Promise<{ pid: number }>;
  /** A cell in a stateful code context (src/interpreter). */
  runCode(id: string, input: CodeInput, hooks?: RunHooks): Promise<RunCodeResult>;
  /** The whole file; PayloadTooLargeError when it is larger than maxBytes. */
  readFile(id: string, path: string, maxBytes: number): Promise<Buffer>;
  writeFile(id: string, path: string, data: Buffer, opts: { mode?: number; metadata?: Record<string, string> }): Promise<{ path: string; size: number; metadata?: Record<string, string> }>;
  listFiles(id: string, path: string, limit?: number): Promise<{ entries: FileEntry[]; truncated: boolean }>;
  statFile(id: string, path: string): Promise<FileEntry>;
  removeFile(id: string, path: string, recursive: boolean): Promise<void>;
  makeDir(id: string, path: string): Promise<void>;
  setNetwork(id: string, cfg: NetworkConfig): Promise<SandboxNetwork>;
  networkLog(id: string, q: { since?: number | undefined; limit?: number | undefined }): Promise<{ entries: NetworkLogEntry[]; cursor: number }>;
  portAccess(id: string, port: number): Promise<PortAccess>;
  /** The sandbox log (src/sandboxes/events.ts). */
  logs(id: string, q: SandboxLogQuery): Promise<SandboxLogResponse>;
}

function tooLarge(path: string, size: number, maxBytes: number): PayloadTooLargeError {
  return new PayloadTooLargeError(`${path} is ${size} bytes, more than the limit of ${maxBytes}; read a part with run_command (head -c, tail -c)`, {
    size,
    maxBytes,
  });
}

/**
 * The daemon's services in process, acting for `principal` (whom the
 * transport authenticated): it sees its owner's sandboxes only, unless it is
 * an admin, and its key's quotas apply to what it creates.
 */
export function servicesBackend(services: Services, principal: Principal = ANONYMOUS_ADMIN): McpBackend {
  const ctx = requestContext(principal, 'mcp');
  return {
    async createSandbox(input, signal) {
      return toApiSandbox(await services.sandboxes.create(ctx, { ...input, templateWaitMs: MCP_TEMPLATE_WAIT_MS, ...(signal ? { signal } : {}) }));
    },
    async getSandbox(id) {
      return toApiSandbox(services.sandboxes.get(ctx, id));
    },
    async listSandboxes(filter) {
      return services.sandboxes.list(ctx, filter).map(toApiSandbox);
    },
    async killSandbox(id) {
      return toApiSandbox(await services.sandboxes.kill(ctx, id));
    },
    async setSandboxTimeout(id, timeoutMs) {
      return toApiSandbox(services.sandboxes.setTimeout(ctx, id, timeoutMs));
    },
    async lifecycle(id, verb, opts) {
      const s = services.sandboxes;
      const rec =
        verb === 'pause' ? (opts.memory === 'disk' ? await s.hibernate(ctx, id) : await s.pause(ctx, id)) : verb === 'resume' ? await s.resume(ctx, id, opts) : verb === 'stop' ? await s.stop(ctx, id) : await s.start(ctx, id, opts);
      return toApiSandbox(rec);
    },
    async snapshot(id, opts) {
      return services.snapshots.take(ctx, id, opts);
    },
    async fork(id, opts) {
      const r = await services.snapshots.fork(ctx, id, opts);
      return { snapshotId: r.snapshot.id, sandboxIds: r.sandboxes.map((x) => x.id) };
    },
    async listSnapshots(filter) {
      return services.snapshots.list(ctx, filter);
    },
    async deleteSnapshot(ref) {
      await services.snapshots.remove(ctx, ref);
    },
    async runCommand(id, input, hooks = {}) {
      const onOutput = hooks.onOutput;
      // Progress notifications are small and few per chunk: this sink never asks the process to wait.
      const sink: EventSink | undefined = onOutput
        ? {
            write: wireEvents('utf8', (ev) => {
              if (ev.type === 'stdout' || ev.type === 'stderr') onOutput(ev.type, ev.data);
              return true;
            }),
            drained: () => Promise.resolve(),
          }
        : undefined;
      const r = await services.commands.run(ctx, id, { ...input, background: false }, {
        ...(hooks.signal ? { signal: hooks.signal } : {}),
        ...(sink ? { sink } : {}),
      });
      return r as CommandResult;
    },
    async startCommand(id, input) {
      return (await services.commands.run(ctx, id, { ...input, background: true })) as { pid: number };
    },
    async runCode(id, input, hooks = {}) {
      const onOutput = hooks.onOutput;
      const sink = onOutput
        ? {
            write: (ev: { type: string; data?: string }) => {
              if ((ev.type === 'stdout' || ev.type === 'stderr') && ev.data) onOutput(ev.type, ev.data);
              return true;
            },
            drained: () => Promise.resolve(),
          }
        : undefined;
      return services.code.run(ctx, id, input, { ...(hooks.signal ? { signal: hooks.signal } : {}), ...(sink ? { sink } : {}) });
    },
    async readFile(id, path, maxBytes) {
      const { size, stream } = await services.files.read(ctx, id, path);
      if (size > maxBytes) {
        stream.destroy();
        throw tooLarge(path, size, maxBytes);
      }
      const parts: Buffer[] = [];
      let total = 0;
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        total += chunk.length;
        // The file may grow while it is read.
        if (total > maxBytes) {
          stream.destroy();
          throw tooLarge(path, total, maxBytes);
        }
        parts.push(chunk);
      }
      return Buffer.concat(parts);
    },
    async setNetwork(id, cfg) {
      return services.network.set(ctx, id, cfg);
    },
    async networkLog(id, q) {
      return services.network.log(ctx, id, q);
    },
    async portAccess(id, port) {
      return services.network.portAccess(ctx, id, port);
    },
    async logs(id, q) {
      return services.logs.list(ctx, id, q);
    },
    async writeFile(id, path, data, opts) {
      return services.files.write(ctx, id, path, Readable.from([data]), opts);
    },
    async listFiles(id, path, limit) {
      return services.files.list(ctx, id, path, limit);
    },
    async statFile(id, path) {
      return services.files.stat(ctx, id, path);
    },
    async removeFile(id, path, recursive) {
      await services.files.remove(ctx, id, path, recursive);
    },
    async makeDir(id, path) {
      await services.files.mkdir(ctx, id, path);
    },
  };
}

/** A running daemon through the SDK. Connected Sandbox objects are kept per id. */
export function sdkBackend(conn: ConnectionOptions = {}): McpBackend {
  const handles = new Map<string, Promise<Sandbox>>();
  const MAX_HANDLES = 256;
  const sandbox = (id: string): Promise<Sandbox> => {
    let h = handles.get(id);
    if (!h) {
      h = Sandbox.connect(id, conn);
      h.catch(() => handles.delete(id));
      if (handles.size >= MAX_HANDLES) handles.delete(handles.keys().next().value as string);
      handles.set(id, h);
    }
    return h;
  };
  return {
    async createSandbox(input, signal) {
      const s = await Sandbox.create({ ...conn, ...input, ...(signal ? { signal } : {}) });
      handles.set(s.id, Promise.resolve(s));
      return s.getInfo();
    },
    async getSandbox(id) {
      return (await sandbox(id)).getInfo();
    },
    async listSandboxes(filter) {
      return Sandbox.list({ ...conn, ...(filter.state ? { state: filter.state } : {}), ...(filter.metadata ? { metadata: filter.metadata } : {}) });
    },
    async killSandbox(id) {
      handles.delete(id);
      return Sandbox.kill(id, conn);
    },
    async setSandboxTimeout(id, timeoutMs) {
      return (await sandbox(id)).setTimeout(timeoutMs);
    },
    async lifecycle(id, verb, opts) {
      const s = await sandbox(id);
      return verb === 'pause' ? s.pause(opts.memory !== undefined ? { memory: opts.memory } : {}) : verb === 'resume' ? s.resume(opts) : verb === 'stop' ? s.stop() : s.start(opts);
    },
    async fork(id, opts) {
      const forks = await (await sandbox(id)).fork(opts);
      // The SDK hands back the forks; their snapshot is the newest of the source's marked forkOf.
      const snaps = (await Snapshot.list({ ...conn, sandboxId: id })).filter((x) => x.metadata.forkOf === id);
      snaps.sort((a, b) => Date.parse(a.createdAt) - Date.parse(b.createdAt));
      return { snapshotId: snaps.at(-1)?.id ?? '', sandboxIds: forks.map((f) => f.id) };
    },
    async snapshot(id, opts) {
      return (await sandbox(id)).snapshot({ ...(opts.name !== undefined ? { name: opts.name } : {}), ...(opts.metadata !== undefined ? { metadata: opts.metadata } : {}) });
    },
    async listSnapshots(filter) {
      return Snapshot.list({ ...conn, ...(filter.sandboxId !== undefined ? { sandboxId: filter.sandboxId } : {}) });
    },
    async deleteSnapshot(ref) {
      await Snapshot.delete(ref, conn);
    },
    async runCommand(id, input, hooks = {}) {
      const s = await sandbox(id);
      const onOutput = hooks.onOutput;
      return s.commands.run(input.cmd, {
        cwd: input.cwd,
        envs: input.envs,
        user: input.user,
        timeoutMs: input.timeoutMs,
        stdin: input.stdin,
        ...(hooks.signal ? { signal: hooks.signal } : {}),
        ...(onOutput ? { onStdout: (d: string) => onOutput('stdout', d), onStderr: (d: string) => onOutput('stderr', d) } : {}),
      });
    },
    async runCode(id, input, hooks = {}) {
      const s = await sandbox(id);
      const onOutput = hooks.onOutput;
      return s.runCode(input.code, {
        ...(input.language ? { language: input.language } : {}),
        ...(input.context ? { context: input.context } : {}),
        ...(input.envs ? { envs: input.envs } : {}),
        ...(input.timeoutMs !== undefined ? { timeoutMs: input.timeoutMs } : {}),
        ...(hooks.signal ? { signal: hooks.signal } : {}),
        ...(onOutput ? { onStdout: (d: string) => onOutput('stdout', d), onStderr: (d: string) => onOutput('stderr', d) } : {}),
      });
    },
    async startCommand(id, input) {
      const s = await sandbox(id);
      const h = await s.commands.run(input.cmd, { cwd: input.cwd, envs: input.envs, user: input.user, timeoutMs: input.timeoutMs, stdin: input.stdin, background: true });
      return { pid: h.pid };
    },
    async readFile(id, path, maxBytes) {
      const s = await sandbox(id);
      const st = await s.files.stat(path);
      if (st.type === 'file' && st.size > maxBytes) throw tooLarge(path, st.size, maxBytes);
      const bytes = await s.files.read(path, { format: 'bytes' });
      if (bytes.byteLength > maxBytes) throw tooLarge(path, bytes.byteLength, maxBytes);
      return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    },
    async writeFile(id, path, data, opts) {
      return (await sandbox(id)).files.write(path, data, opts);
    },
    async listFiles(id, path, limit) {
      return (await sandbox(id)).files.listDetailed(path, limit !== undefined ? { limit } : {});
    },
    async statFile(id, path) {
      return (await sandbox(id)).files.stat(path);
    },
    async removeFile(id, path, recursive) {
      await (await sandbox(id)).files.remove(path, { recursive });
    },
    async makeDir(id, path) {
      await (await sandbox(id)).files.makeDir(path);
    },
    async setNetwork(id, cfg) {
      return (await sandbox(id)).network.set(cfg);
    },
    async networkLog(id, q) {
      return (await sandbox(id)).network.log({ ...(q.since !== undefined ? { since: q.since } : {}), ...(q.limit !== undefined ? { limit: q.limit } : {}) });
    },
    async portAccess(id, port) {
      return (await sandbox(id)).network.port(port);
    },
    async logs(id, q) {
      return (await sandbox(id)).logs({
        ...(q.since !== undefined ? { since: q.since } : {}),
        ...(q.limit !== undefined ? { limit: q.limit } : {}),
        ...(q.level !== undefined ? { level: q.level } : {}),
      });
    },
  };
}
