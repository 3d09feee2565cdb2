/**
 * The code interpreter service: stateful contexts per sandbox and the cells
 * run in them. REST, the SDK (through REST), the CLI and the MCP tools all
 * call this with the caller's RequestContext; it asks the sandbox service for
 * the sandbox (visibility, state, autoResume) and its agent connection, and
 * never knows HTTP.
 *
 * Contexts live as long as their sandbox's agent connection: a stop, a kill or
 * a daemon restart ends them (a stopped sandbox has no processes to keep them).
 */
import { randomBytes } from 'node:crypto';
import type { AgentConnection } from '../agent/types.js';
import type { RequestContext } from '../auth/context.js';
import { InvalidArgumentError, NotFoundError, RateLimitedError, UnsupportedError } from '../errors/index.js';
import { CODE_LIMITS, type CodeContext, type CodeLanguage, type CreateCodeContextRequest, type RunCodeRequest, type RunCodeResult } from '../schemas/code.js';
import { LIMITS } from '../schemas/common.js';
import type { SandboxManager } from '../sandboxes/manager.js';
import { buildEnv, resolveSandboxPath } from '../sandboxes/paths.js';
import { LiveContext, type CodeSink } from './context.js';
import { DRIVER_STREAM_TABLE, driverArgv, installDrivers } from './drivers.js';

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';
function newContextId(): string {
  let s = 'ctx-';
  for (const b of randomBytes(12)) s += ALPHABET[b % 36];
  return s;
}

/** A sandbox's contexts, bound to the agent connection that runs their drivers. */
interface SandboxContexts {
  conn: AgentConnection;
  contexts: Map<string, LiveContext>;
  /** The default context of each language, or its creation in flight. */
  defaults: Map<CodeLanguage, Promise<LiveContext>>;
}

export interface InterpreterOptions {
  /** SIGINT grace before kill and restart (tests shorten it). */
  interruptGraceMs?: number;
}

export class CodeInterpreterService {
  private readonly bySandbox = new Map<string, SandboxContexts>();

  constructor(
    private readonly sandboxes: SandboxManager,
    private readonly opts: InterpreterOptions = {},
  ) {}

  /** Starts a new context and waits until its interpreter is ready. */
  async createContext(ctx: RequestContext, sandboxId: string, req: CreateCodeContextRequest): Promise<CodeContext> {
    const c = await this.newContext(ctx, sandboxId, req.language ?? 'python', false, req);
    return c.info();
  }

  listContexts(ctx: RequestContext, sandboxId: string): CodeContext[] {
    this.sandboxes.get(ctx, sandboxId);
    const sc = this.bySandbox.get(sandboxId);
    return sc ? [...sc.contexts.values()].map((c) => c.info()) : [];
  }

  getContext(ctx: RequestContext, sandboxId: string, contextId: string): CodeContext {
    this.sandboxes.get(ctx, sandboxId);
    return this.find(sandboxId, contextId).info();
  }

  /** A fresh interpreter in the same context (same id, language, cwd): all state is gone. */
  async restartContext(ctx: RequestContext, sandboxId: string, contextId: string): Promise<CodeContext> {
    await this.sandboxes.use(ctx, sandboxId, 'restart a code context');
    const c = this.find(sandboxId, contextId);
    await c.restart();
    return c.info();
  }

  async removeContext(ctx: RequestContext, sandboxId: string, contextId: string): Promise<void> {
    this.sandboxes.get(ctx, sandboxId);
    const sc = this.bySandbox.get(sandboxId);
    const c = this.find(sandboxId, contextId);
    sc?.contexts.delete(contextId);
    if (c.isDefault) sc?.defaults.delete(c.language);
    await c.close();
  }

  /**
   * Runs a cell: in `req.context`, else in the sandbox's default context of
   * `req.language` (python when neither says), created on first use.
   */
  async run(ctx: RequestContext, sandboxId: string, req: RunCodeRequest, hooks: { sink?: CodeSink; signal?: AbortSignal } = {}): Promise<RunCodeResult> {
    // A caller waiting on a cell is not idle: the sandbox's idle policy must not pause it meanwhile.
    const release = this.sandboxes.hold(sandboxId);
    try {
      let c: LiveContext;
      if (req.context !== undefined) {
        await this.sandboxes.use(ctx, sandboxId, 'run code');
        c = this.find(sandboxId, req.context);
        if (req.language !== undefined && req.language !== c.language) {
          throw new InvalidArgumentError(`context ${c.id} runs ${c.language}, not ${req.language}: leave language out or use a ${req.language} context`, {
            contextId: c.id,
            language: c.language,
          });
        }
      } else {
        c = await this.defaultContext(ctx, sandboxId, req.language ?? 'python');
      }
      return await c.execute({
        code: req.code,
        envs: req.envs,
        timeoutMs: req.timeoutMs ?? LIMITS.defaultCommandTimeoutMs,
        maxOutputBytes: req.maxOutputBytes ?? CODE_LIMITS.defaultOutputBytes,
        sink: hooks.sink,
        signal: hooks.signal,
      });
    } finally {
      release();
    }
  }

  /** Ends every context of every sandbox (daemon shutdown leaves sandboxes running, but not our drivers' clients). */
  async close(): Promise<void> {
    const all = [...this.bySandbox.values()].flatMap((sc) => [...sc.contexts.values()]);
    this.bySandbox.clear();
    await Promise.all(all.map((c) => c.close().catch(() => undefined)));
  }

  // --- internals ------------------------------------------------------------------------

  private find(sandboxId: string, contextId: string): LiveContext {
    const c = this.bySandbox.get(sandboxId)?.contexts.get(contextId);
    if (!c || c.isClosed) throw new NotFoundError(`no code context ${contextId} in sandbox ${sandboxId}`, { contextId });
    return c;
  }

  private async defaultContext(ctx: RequestContext, sandboxId: string, language: CodeLanguage): Promise<LiveContext> {
    const { conn } = await this.sandboxes.use(ctx, sandboxId, 'run code');
    const sc = this.contextsOf(sandboxId, conn);
    let p = sc.defaults.get(language);
    if (!p) {
      p = this.newContext(ctx, sandboxId, language, true, {});
      sc.defaults.set(language, p);
      // A default that failed to start is tried again by the next call.
      p.catch(() => {
        if (sc.defaults.get(language) === p) sc.defaults.delete(language);
      });
    }
    const c = await p;
    if (c.isClosed) {
      sc.defaults.delete(language);
      return this.defaultContext(ctx, sandboxId, language);
    }
    return c;
  }

  private contextsOf(sandboxId: string, conn: AgentConnection): SandboxContexts {
    let sc = this.bySandbox.get(sandboxId);
    if (sc && sc.conn !== conn) {
      // A new connection (the sandbox was stopped and started, or its agent reconnected): the old drivers are gone.
      this.drop(sandboxId, sc);
      sc = undefined;
    }
    if (!sc) {
      const fresh: SandboxContexts = { conn, contexts: new Map(), defaults: new Map() };
      this.bySandbox.set(sandboxId, fresh);
      conn.onClose(() => {
        if (this.bySandbox.get(sandboxId) === fresh) this.drop(sandboxId, fresh);
      });
      sc = fresh;
    }
    return sc;
  }

  private drop(sandboxId: string, sc: SandboxContexts): void {
    if (this.bySandbox.get(sandboxId) === sc) this.bySandbox.delete(sandboxId);
    for (const c of sc.contexts.values()) void c.close().catch(() => undefined);
  }

  private async newContext(
    ctx: RequestContext,
    sandboxId: string,
    language: CodeLanguage,
    isDefault: boolean,
    req: Omit<CreateCodeContextRequest, 'language'>,
  ): Promise<LiveContext> {
    const { rec, conn } = await this.sandboxes.use(ctx, sandboxId, 'create a code context');
    if (!conn.supports('exec-streams')) {
      throw new UnsupportedError(`sandbox ${sandboxId}'s agent (${conn.agentVersion}) is too old for code contexts: stop and start the sandbox to get the current agent`);
    }
    const sc = this.contextsOf(sandboxId, conn);
    if (sc.contexts.size >= CODE_LIMITS.maxContextsPerSandbox) {
      throw new RateLimitedError(`sandbox ${sandboxId} already has ${CODE_LIMITS.maxContextsPerSandbox} code contexts: remove one first`, {
        limit: CODE_LIMITS.maxContextsPerSandbox,
      });
    }
    const user = req.user ?? rec.defaults.user;
    const cwdAsked = req.cwd ?? rec.defaults.cwd;
    const cwd = cwdAsked === undefined ? undefined : resolveSandboxPath(cwdAsked);
    const id = newContextId();
    const env = buildEnv(rec.envs, req.envs, user);
    const c = new LiveContext({
      id,
      language,
      cwd,
      user,
      isDefault,
      ...(this.opts.interruptGraceMs !== undefined ? { interruptGraceMs: this.opts.interruptGraceMs } : {}),
      spawn: async () => {
        await installDrivers(conn);
        return conn.exec({
          argv: driverArgv(language, id, isDefault),
          env,
          ...(cwd !== undefined ? { cwd } : {}),
          ...(user !== undefined ? { user } : {}),
          stdin: false,
          streams: DRIVER_STREAM_TABLE,
        });
      },
    });
    sc.contexts.set(id, c);
    try {
      await c.start();
    } catch (e) {
      sc.contexts.delete(id);
      await c.close().catch(() => undefined);
      throw e;
    }
    return c;
  }
}
