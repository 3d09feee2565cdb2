/**
 * Terminals in sandboxes: a process whose stdin, stdout and stderr are a
 * pseudo-terminal in the agent (protocol 1.2, feature `pty`). The terminal is
 * a process like any other once started (commands.ts): it keeps running with
 * no client, keeps its recent output for the next one, and is listed, killed
 * and tagged with the rest. What is particular to terminals is here: the
 * login shell, TERM, and the size.
 */
import type { RequestContext } from '../auth/context.js';
import { UnsupportedError } from '../errors/index.js';
import { AgentFeatureError } from '../agent/client.js';
import type { CreatePtyRequest } from '../schemas/pty.js';
import type { CommandService, ProcessSelector } from './commands.js';
import type { SandboxManager } from './manager.js';
import { buildEnv, resolveSandboxPath } from './paths.js';

/** The wire id of a terminal's stream: 1, so its output is the process's stdout everywhere else. */
export const PTY_STREAM = 1;
export const DEFAULT_COLS = 80;
export const DEFAULT_ROWS = 24;

/**
 * The default program: a login shell, bash where the template has it (debian), else sh (busybox).
 * Chosen inside the sandbox, whose files only the sandbox knows; `exec` leaves the shell as the process.
 */
export const LOGIN_SHELL = ['/bin/sh', '-c', 'cd "$HOME" 2>/dev/null; if [ -x /bin/bash ]; then exec /bin/bash -l; fi; exec /bin/sh -l'];

export class PtyService {
  constructor(
    private readonly sandboxes: SandboxManager,
    private readonly commands: CommandService,
  ) {}

  /** Start a terminal; resolves with its pid once it runs. Connect to it to see it (GET .../pty/:pid). */
  async create(ctx: RequestContext, sandboxId: string, req: CreatePtyRequest): Promise<{ pid: number }> {
    const sandboxEnvs = this.sandboxes.get(ctx, sandboxId).envs;
    const env: Record<string, string> = { ...buildEnv(sandboxEnvs, undefined, req.user), TERM: 'xterm-256color', ...(req.envs ?? {}) };
    // The default shell goes to $HOME itself (a home that does not exist is no reason to fail).
    const cwd = req.cwd !== undefined ? resolveSandboxPath(req.cwd) : undefined;
    try {
      return await this.commands.start(
        ctx,
        sandboxId,
        {
          argv: req.cmd ?? LOGIN_SHELL,
          env,
          cwd,
          user: req.user,
          streams: [{ id: PTY_STREAM, kind: 'pty', fds: [0, 1, 2], rows: req.rows ?? DEFAULT_ROWS, cols: req.cols ?? DEFAULT_COLS }],
          tag: req.tag,
          timeoutMs: req.timeoutMs,
        },
        'open a terminal',
      );
    } catch (err) {
      // A sandbox created by an older daemon keeps its older agent: say so as `unsupported`, not as a sandbox failure.
      if (err instanceof AgentFeatureError) throw new UnsupportedError(err.message, err.details);
      throw err;
    }
  }

  resize(ctx: RequestContext, sandboxId: string, sel: ProcessSelector, size: { cols: number; rows: number }): Promise<void> {
    return this.commands.resize(ctx, sandboxId, sel, size);
  }
}
