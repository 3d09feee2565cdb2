/** Terminals (PTYs): a process with a terminal, reached over a WebSocket of raw bytes plus small JSON control messages. */
import { z } from 'zod';
import { CommandTimeoutMs, EnvVars, LIMITS, SandboxPath } from './common.js';
import { ProcessTag } from './commands.js';

export const TerminalCols = z.number().int().min(1).max(1000).describe('Terminal width in character cells');
export const TerminalRows = z.number().int().min(1).max(1000).describe('Terminal height in lines');

export const CreatePtyRequest = z
  .object({
    cols: TerminalCols.optional().describe('Terminal width in character cells; default 80'),
    rows: TerminalRows.optional().describe('Terminal height in lines; default 24'),
    cmd: z
      .array(z.string().max(LIMITS.maxArg).refine((s) => !s.includes('\0'), 'must not contain NUL'))
      .min(1)
      .max(LIMITS.maxArgs)
      .optional()
      .describe('argv to run in the terminal; default a login shell (bash -l where the sandbox has it, else sh -l)'),
    cwd: SandboxPath.optional().describe('Working directory; default the user\'s home'),
    envs: EnvVars.optional().describe('Extra environment variables (TERM is xterm-256color unless set here)'),
    user: z.string().min(1).max(64).regex(/^[A-Za-z0-9_.-]+$/).optional().describe('User name or numeric uid inside the sandbox; default root'),
    tag: ProcessTag.optional(),
    timeoutMs: CommandTimeoutMs.optional().describe('Kill the terminal\'s process after this many ms; default no limit'),
  })
  .strict();
export type CreatePtyRequest = z.infer<typeof CreatePtyRequest>;

export const PtyStarted = z.object({ pid: z.number().int().describe('Pid of the terminal\'s process; connect to it with GET /v1/sandboxes/:id/pty/:pid (WebSocket)') });

export const ResizePtyRequest = z.object({ cols: TerminalCols, rows: TerminalRows }).strict();

/** Text frames a client sends on a terminal's WebSocket (binary frames are keystrokes). */
export const PtyClientMessage = z.discriminatedUnion('type', [
  z.object({ type: z.literal('resize'), cols: TerminalCols, rows: TerminalRows }).strict(),
  z.object({ type: z.literal('signal'), signal: z.enum(['SIGTERM', 'SIGKILL', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGSTOP', 'SIGCONT']) }).strict(),
]);
export type PtyClientMessage = z.infer<typeof PtyClientMessage>;

/** Text frames the daemon sends on a terminal's WebSocket (binary frames are the terminal's output). */
export const PtyServerMessage = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('ready'),
    pid: z.number().int(),
    replayBytes: z.number().int().describe('How many bytes of recent output (at most 64 KiB) come first, before live output'),
  }),
  z.object({ type: z.literal('exit'), exitCode: z.number().int(), signal: z.string().optional() }),
  z.object({ type: z.literal('error'), error: z.object({ code: z.string(), message: z.string() }) }),
]);
export type PtyServerMessage = z.infer<typeof PtyServerMessage>;
