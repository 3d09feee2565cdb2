import { z } from 'zod';
import { CommandTimeoutMs, EnvVars, LIMITS, SandboxPath, Timestamp } from './common.js';

export const OutputEncodingSchema = z
  .enum(['utf8', 'base64'])
  .describe(
    'How output is carried: utf8 text (characters split across chunks arrive whole; bytes that are not UTF-8 become U+FFFD) or base64 of the exact bytes',
  );

const Arg = z.string().max(LIMITS.maxArg).refine((s) => !s.includes('\0'), 'must not contain NUL');

/** A process's tag: never all digits, so a path segment is a pid or a tag, never both. */
export const ProcessTag = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z_][A-Za-z0-9_.-]*$/, 'tags are letters, digits, _ . - and start with a letter or _')
  .describe('A name for the process, unique among the sandbox\'s running processes: list, connect to and kill it by this name');

/** Where a path says which process: its pid, or the tag of a running (else the latest finished) process. */
export const ProcessSelector = z
  .union([z.string().regex(/^\d{1,10}$/).transform(Number).pipe(z.number().int().min(1).max(2 ** 31 - 1)), ProcessTag])
  .describe('A pid, or a process tag');

/** A command line for /bin/sh -c. */
export const ShellCommand = Arg.min(1).describe('Shell command line, run with /bin/sh -c, e.g. "ls -la /tmp && echo done"');

export const RunCommandRequest = z
  .object({
    cmd: z
      .union([ShellCommand, z.array(Arg).min(1).max(LIMITS.maxArgs)])
      .describe('A shell command string (run with /bin/sh -c) or an argv array run directly'),
    envs: EnvVars.optional().describe('Extra environment variables for this command (over the sandbox envs)'),
    cwd: SandboxPath.optional().describe('Working directory; default /'),
    user: z.string().min(1).max(64).regex(/^[A-Za-z0-9_.-]+$/).optional().describe('User name or numeric uid inside the sandbox; default root'),
    stdin: z.string().max(LIMITS.maxStdinBytes).optional().describe('Data written to stdin, which is then closed (foreground only)'),
    timeoutMs: CommandTimeoutMs.optional(),
    background: z.boolean().optional().describe('Return at once with the pid; read output with /wait or /stream'),
    stream: z.boolean().optional().describe('Stream output as NDJSON events (start, stdout, stderr, exit) instead of one JSON result'),
    maxOutputBytes: z.number().int().min(0).max(LIMITS.maxOutputBytes).optional().describe('Keep at most this many bytes of each of stdout and stderr in buffered results; default 1 MiB'),
    encoding: OutputEncodingSchema.optional().describe('How stdout and stderr are carried in the result and stream events: utf8 (default) or base64 of the exact bytes'),
    tag: ProcessTag.optional(),
  })
  .strict();
export type RunCommandRequest = z.infer<typeof RunCommandRequest>;

export const CommandResult = z.object({
  pid: z.number().int(),
  exitCode: z.number().int().describe('Exit code; 128+N when killed by signal N'),
  signal: z.string().optional().describe('Signal that killed the process, e.g. SIGKILL'),
  stdout: z.string().describe('Standard output: UTF-8 text (invalid bytes replaced), or base64 when encoding is base64'),
  stderr: z.string(),
  encoding: z.literal('base64').optional().describe('Present when stdout and stderr are base64 (the request asked for it)'),
  stdoutTruncated: z.boolean().optional().describe('True when stdout exceeded maxOutputBytes and was cut'),
  stderrTruncated: z.boolean().optional(),
  timedOut: z.boolean().optional().describe('True when the command was killed because its timeout passed'),
  oomKilled: z.boolean().optional().describe("True when the kernel's OOM killer ended it: the sandbox's memory limit was reached"),
});
export type CommandResult = z.infer<typeof CommandResult>;

/** One line of an NDJSON command stream. */
export const CommandEvent = z.discriminatedUnion('type', [
  z.object({ type: z.literal('start'), pid: z.number().int() }),
  z.object({ type: z.literal('stdout'), data: z.string(), encoding: z.literal('base64').optional().describe('Present when data is base64') }),
  z.object({ type: z.literal('stderr'), data: z.string(), encoding: z.literal('base64').optional() }),
  z.object({
    type: z.literal('exit'),
    exitCode: z.number().int(),
    signal: z.string().optional(),
    timedOut: z.boolean().optional(),
    oomKilled: z.boolean().optional(),
  }),
  z.object({ type: z.literal('error'), error: z.object({ code: z.string(), message: z.string() }) }),
]);
export type CommandEvent = z.infer<typeof CommandEvent>;

export const BackgroundStarted = z.object({ pid: z.number().int() });

export const ProcessInfo = z.object({
  pid: z.number().int(),
  cmd: z.array(z.string()).describe('argv of the process'),
  cwd: z.string().optional(),
  tag: z.string().optional().describe('The tag it was started with'),
  pty: z.boolean().optional().describe('True for a terminal (started with POST /v1/sandboxes/:id/pty)'),
  startedAt: Timestamp,
  running: z.boolean(),
  exitCode: z.number().int().optional(),
});
export type ProcessInfo = z.infer<typeof ProcessInfo>;
export const ListProcessesResponse = z.object({ processes: z.array(ProcessInfo) });

export const ProcessParams = z.object({
  id: z.string(),
  pid: ProcessSelector,
});

export const ListProcessesQuery = z.object({ tag: ProcessTag.optional().describe('Only processes with this tag') });

export const SendStdinRequest = z
  .object({
    data: z.string().max(LIMITS.maxStdinBytes).optional().describe('Data to write to stdin'),
    encoding: z.enum(['utf8', 'base64']).optional().describe('How data is encoded; default utf8'),
    eof: z.boolean().optional().describe('Close stdin after writing'),
  })
  .strict();

export const SIGNALS = ['SIGTERM', 'SIGKILL', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGSTOP', 'SIGCONT'] as const;
export const SignalRequest = z.object({ signal: z.enum(SIGNALS).describe('Signal sent to the process group') }).strict();

export const WaitQuery = z.object({
  timeoutMs: z.coerce.number().int().min(0).max(3600_000).optional().describe('Give up waiting after this many ms (408-free: returns the running state)'),
  encoding: OutputEncodingSchema.optional(),
});

export const StreamQuery = z.object({ encoding: OutputEncodingSchema.optional() });

/** Text frames a client sends on a process's WebSocket (GET .../commands/:pid/connect); binary frames are stdin. */
export const ProcessClientMessage = z.discriminatedUnion('type', [
  z.object({ type: z.literal('eof') }).strict().describe('Close the process\'s stdin'),
  z.object({ type: z.literal('signal'), signal: z.enum(SIGNALS) }).strict().describe('Signal the process group'),
]);
export type ProcessClientMessage = z.infer<typeof ProcessClientMessage>;

/** A request's id on the command channel: chosen by the client, unique among its requests in flight. */
const ChannelRequestId = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).describe('Chosen by the client; the answer carries it back');

/**
 * Text frames a client sends on the command channel (GET /v1/channel). `run` is the body of POST
 * /v1/sandboxes/:id/commands for a buffered foreground command, validated by the same schema
 * (RunCommandRequest, as `body`) with the same errors; `cancel` kills a run in flight, as hanging up
 * on that POST does.
 */
export const ChannelClientMessage = z.discriminatedUnion('op', [
  z
    .object({
      op: z.literal('run'),
      id: ChannelRequestId,
      sandboxId: z.string().max(512).describe('The sandbox, as in the path of POST /v1/sandboxes/:id/commands'),
      body: z.unknown().describe('A RunCommandRequest without background or stream'),
    })
    .strict(),
  z.object({ op: z.literal('cancel'), id: ChannelRequestId }).strict().describe('Kill the command of a run in flight; its answer still comes'),
]);
export type ChannelClientMessage = z.infer<typeof ChannelClientMessage>;

/** What the daemon answers on the command channel: one message per `run`, the result or the error that POST would answer. */
export const ChannelServerMessage = z.union([
  z.object({ id: ChannelRequestId, result: CommandResult }),
  z.object({ id: ChannelRequestId, error: z.object({ code: z.string(), message: z.string(), details: z.record(z.string(), z.unknown()).optional() }) }),
]);
export type ChannelServerMessage = z.infer<typeof ChannelServerMessage>;
