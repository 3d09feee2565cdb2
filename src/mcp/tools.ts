/**
 * The MCP tools, written without the MCP SDK: each one is a name, zod input
 * and output schemas, annotations, and a plain async function from validated
 * input plus a ToolContext to a structured result and a short text. The
 * adapter in server.ts turns them into SDK registrations; moving to another
 * SDK version only touches that adapter.
 *
 * Conventions (docs/mcp.md):
 *  - a command that exits non-zero is a successful call carrying exit_code;
 *    handlers throw (a CapsuleError) only for real failures, which the adapter
 *    reports with isError;
 *  - tools that act inside a sandbox take an optional sandbox_id; without it
 *    they use the session's default sandbox, creating one (and saying so) when
 *    there is none.
 */
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { InvalidArgumentError, isCapsuleError } from '../errors/index.js';
import {
  CommandResult,
  CreateSandboxRequest,
  FileEntry as FileEntrySchema,
  ListFilesQuery,
  ListSandboxesQuery,
  LIMITS,
  MakeDirRequest,
  PathQuery,
  RunCommandRequest,
  Sandbox as SandboxSchema,
  SandboxId,
  SetTimeoutRequest,
  ShellCommand,
  snakeObject,
  TemplateName,
  WriteFileQuery,
} from '../schemas/index.js';
import type { Sandbox as SandboxInfo, FileEntry } from '../schemas/index.js';
import type { McpBackend } from './backend.js';

/** Per-session state. Sandboxes themselves never live here: only which one is the default. */
export interface SessionState {
  defaultSandboxId: string | undefined;
  /** Sandboxes this session created (for `--embedded` cleanup). */
  created: Set<string>;
}

export function newSessionState(): SessionState {
  return { defaultSandboxId: undefined, created: new Set() };
}

export interface ToolContext {
  backend: McpBackend;
  session: SessionState;
  /** Template for sandboxes created because a tool was called without sandbox_id. */
  defaultTemplate: string;
  /** Aborted when the client cancels the request. */
  signal: AbortSignal;
  /** Present when the client asked for progress (it sent a progress token). */
  progress?: ((message: string) => void) | undefined;
}

export interface ToolAnnotations {
  title: string;
  readOnlyHint: boolean;
  destructiveHint: boolean;
  idempotentHint: boolean;
  openWorldHint: boolean;
}

export interface ToolOutcome<O> {
  structured: O;
  text: string;
  /** A failure that still has a result worth returning (a command killed by its timeout). */
  isError?: boolean;
}

export interface ToolDef<I extends z.ZodObject = z.ZodObject, O extends z.ZodObject = z.ZodObject> {
  name: string;
  description: string;
  input: I;
  output: O;
  annotations: ToolAnnotations;
  handler(input: z.infer<I>, ctx: ToolContext): Promise<ToolOutcome<z.infer<O>>>;
}

function tool<I extends z.ZodObject, O extends z.ZodObject>(def: ToolDef<I, O>): ToolDef<I, O> {
  return def;
}

// --- shared fields --------------------------------------------------------------

const OptionalSandboxId = SandboxId.optional().describe(
  'Sandbox to use (from sandbox_create or an earlier result). Omit it to use this session\'s default sandbox; one is created when there is none (always, for stateless clients), and its id is returned',
);
const SandboxRef = {
  sandbox_id: SandboxId.describe('The sandbox the call acted on'),
  sandbox_created: z.boolean().optional().describe('True when this call created the sandbox because sandbox_id was omitted'),
};

/** The API's Sandbox, in snake_case, with the id named as the other tools name it. */
const SandboxSummary = snakeObject(
  SandboxSchema.pick({ template: true, state: true, createdAt: true, expiresAt: true, metadata: true, resources: true, endReason: true, isolation: true }),
).extend({ sandbox_id: SandboxId });

function summary(s: SandboxInfo): z.infer<typeof SandboxSummary> {
  return {
    sandbox_id: s.id,
    template: s.template,
    state: s.state,
    created_at: s.createdAt,
    expires_at: s.expiresAt,
    metadata: s.metadata,
    resources: s.resources,
    ...(s.endReason !== undefined ? { end_reason: s.endReason } : {}),
    isolation: s.isolation,
  };
}

/** The sandbox a call acts on: the given one, the session default, or a new one. */
async function useSandbox(id: string | undefined, ctx: ToolContext): Promise<{ sandbox_id: string; sandbox_created?: true }> {
  if (id !== undefined) return { sandbox_id: id };
  const current = ctx.session.defaultSandboxId;
  if (current !== undefined) {
    const info = await ctx.backend.getSandbox(current).catch(() => undefined);
    if (info?.state === 'running') return { sandbox_id: current };
  }
  const info = await ctx.backend.createSandbox({ template: ctx.defaultTemplate }, ctx.signal);
  ctx.session.defaultSandboxId = info.id;
  ctx.session.created.add(info.id);
  return { sandbox_id: info.id, sandbox_created: true };
}

function createdNote(ref: { sandbox_id: string; sandbox_created?: true }, template: string): string {
  return ref.sandbox_created
    ? `Created sandbox ${ref.sandbox_id} (template ${template}) because no sandbox_id was given; it is now this session's default (stateless clients have none). Pass sandbox_id=${ref.sandbox_id} to keep using it.\n`
    : '';
}

// --- sandboxes ------------------------------------------------------------------

const sandboxCreate = tool({
  name: 'sandbox_create',
  description:
    'Start a new isolated Linux sandbox and return its id. Pass the id as sandbox_id to the other tools. The sandbox is killed when its timeout passes (default 5 minutes; extend with sandbox_set_timeout). It becomes this session\'s default sandbox.',
  input: snakeObject(CreateSandboxRequest.pick({ timeoutMs: true, envs: true, metadata: true, resources: true, isolation: true })).extend({
    // Without the API's default: the server's default template applies (CAPSULE_MCP_TEMPLATE).
    template: TemplateName.optional().describe(
      'Template to start from: debian (Debian with python3) or busybox (tiny, POSIX sh only). Default: the server\'s default template',
    ),
  }),
  output: SandboxSummary,
  annotations: { title: 'Create sandbox', readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
  async handler(input, ctx) {
    const template = input.template ?? ctx.defaultTemplate;
    const info = await ctx.backend.createSandbox(
      { template, timeoutMs: input.timeout_ms, envs: input.envs, metadata: input.metadata, resources: input.resources, isolation: input.isolation },
      ctx.signal,
    );
    ctx.session.defaultSandboxId = info.id;
    ctx.session.created.add(info.id);
    return { structured: summary(info), text: `Created sandbox ${info.id} (template ${info.template}, isolation ${info.isolation}); it expires at ${info.expiresAt}.` };
  },
});

const sandboxList = tool({
  name: 'sandbox_list',
  description: 'List sandboxes (by default the running ones), optionally filtered by state and metadata.',
  input: z.object({
    state: ListSandboxesQuery.shape.state,
    metadata: CreateSandboxRequest.shape.metadata.describe('Only sandboxes whose metadata has all of these key/value pairs'),
  }),
  output: z.object({
    sandboxes: z.array(SandboxSummary),
    default_sandbox_id: SandboxId.optional().describe('The sandbox this session uses when a tool is called without sandbox_id'),
  }),
  annotations: { title: 'List sandboxes', readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  async handler(input, ctx) {
    const list = await ctx.backend.listSandboxes({ state: input.state, metadata: input.metadata });
    const lines = list.map((s) => `${s.id}  ${s.template}  ${s.state}  expires ${s.expiresAt}`);
    const def = ctx.session.defaultSandboxId;
    return {
      structured: { sandboxes: list.map(summary), ...(def !== undefined ? { default_sandbox_id: def } : {}) },
      text: list.length ? lines.join('\n') : 'No sandboxes.',
    };
  },
});

const sandboxKill = tool({
  name: 'sandbox_kill',
  description: 'Kill a sandbox and every process in it; its files are deleted. Killing an already ended sandbox does nothing.',
  input: z.object({ sandbox_id: SandboxId.describe('The sandbox to kill') }),
  output: SandboxSummary,
  annotations: { title: 'Kill sandbox', readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
  async handler(input, ctx) {
    const info = await ctx.backend.killSandbox(input.sandbox_id);
    if (ctx.session.defaultSandboxId === input.sandbox_id) ctx.session.defaultSandboxId = undefined;
    return { structured: summary(info), text: `Sandbox ${info.id} is ${info.state}.` };
  },
});

const sandboxSetTimeout = tool({
  name: 'sandbox_set_timeout',
  description: 'Set how long a running sandbox may live from now (extend or shorten its lifetime).',
  input: snakeObject(SetTimeoutRequest).extend({ sandbox_id: SandboxId.describe('The sandbox to change') }),
  output: SandboxSummary,
  annotations: { title: 'Set sandbox timeout', readOnlyHint: false, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  async handler(input, ctx) {
    const info = await ctx.backend.setSandboxTimeout(input.sandbox_id, input.timeout_ms);
    return { structured: summary(info), text: `Sandbox ${info.id} now expires at ${info.expiresAt}.` };
  },
});

// --- commands -------------------------------------------------------------------

/** The API's CommandResult in snake_case, plus what only the tool says. */
const CommandOutput = snakeObject(CommandResult.pick({ pid: true, signal: true, timedOut: true, oomKilled: true })).extend({
  ...SandboxRef,
  exit_code: CommandResult.shape.exitCode.optional().describe('Exit code (absent for background commands); 128+N when killed by signal N. Non-zero is not a tool error'),
  stdout: z.string().describe('Standard output (UTF-8; at most 1 MiB kept)'),
  stderr: z.string().describe('Standard error (UTF-8; at most 1 MiB kept)'),
  truncated: z.boolean().optional().describe('True when stdout or stderr was longer than the kept part'),
  background: z.boolean().optional().describe('True when the command was started in the background and keeps running'),
});

/** Send output to the progress callback in readable pieces. */
function progressSink(ctx: ToolContext): ((stream: 'stdout' | 'stderr', data: string) => void) | undefined {
  const p = ctx.progress;
  if (!p) return undefined;
  return (stream, data) => p(stream === 'stderr' ? `[stderr] ${sliceText(data, 4000)}` : sliceText(data, 4000));
}

const runCommand = tool({
  name: 'run_command',
  description:
    'Run a shell command (/bin/sh -c) in a sandbox and return its exit code, stdout and stderr. A non-zero exit code is a normal result, not an error. Output is streamed as progress notifications when the client asks for progress; cancelling the request kills the command. With background=true the call returns at once with the pid.',
  input: snakeObject(RunCommandRequest.pick({ cwd: true, envs: true, user: true, timeoutMs: true, background: true, stdin: true })).extend({
    sandbox_id: OptionalSandboxId,
    command: ShellCommand,
  }),
  output: CommandOutput,
  annotations: { title: 'Run command', readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false },
  async handler(input, ctx) {
    const ref = await useSandbox(input.sandbox_id, ctx);
    const note = createdNote(ref, ctx.defaultTemplate);
    const cmd = { cmd: input.command, cwd: input.cwd, envs: input.envs, user: input.user, timeoutMs: input.timeout_ms, stdin: input.stdin };
    if (input.background) {
      const { pid } = await ctx.backend.startCommand(ref.sandbox_id, cmd);
      return {
        structured: { ...ref, pid, stdout: '', stderr: '', background: true },
        text: `${note}Started pid ${pid} in the background in ${ref.sandbox_id}.`,
      };
    }
    const onOutput = progressSink(ctx);
    const r = await ctx.backend.runCommand(ref.sandbox_id, cmd, { signal: ctx.signal, ...(onOutput ? { onOutput } : {}) });
    const truncated = r.stdoutTruncated || r.stderrTruncated;
    const structured = {
      ...ref,
      pid: r.pid,
      exit_code: r.exitCode,
      stdout: r.stdout,
      stderr: r.stderr,
      ...(r.signal !== undefined ? { signal: r.signal } : {}),
      ...(r.timedOut ? { timed_out: true } : {}),
      ...(r.oomKilled ? { oom_killed: true } : {}),
      ...(truncated ? { truncated: true } : {}),
    };
    const head = r.timedOut
      ? `Command killed after its timeout of ${input.timeout_ms ?? LIMITS.defaultCommandTimeoutMs} ms (exit code ${r.exitCode}).`
      : `Exit code ${r.exitCode}.`;
    return { structured, text: `${note}${head}\n${outputText(r.stdout, r.stderr)}`, ...(r.timedOut ? { isError: true } : {}) };
  },
});

function outputText(stdout: string, stderr: string): string {
  const parts: string[] = [];
  if (stdout) parts.push(`stdout:\n${stdout}`);
  if (stderr) parts.push(`stderr:\n${stderr}`);
  return parts.length ? parts.join('\n') : '(no output)';
}

export const LANGUAGES = {
  python: { interpreter: 'python3', ext: 'py', hint: 'use the debian template' },
  javascript: { interpreter: 'node', ext: 'js', hint: 'the stock templates have no Node.js; install it in the sandbox or run the code another way' },
  bash: { interpreter: 'bash', ext: 'sh', hint: 'use the debian template (busybox has only POSIX sh: run it with run_command)' },
} as const;
export type Language = keyof typeof LANGUAGES;

/** Stdout minus one trailing newline: what `print(x)` / `echo x` produced. */
function resultValue(stdout: string): string {
  return stdout.endsWith('\n') ? stdout.slice(0, -1) : stdout;
}

/** A one-line description of why a script failed: the last stderr line, or the exit code. */
function errorSummary(exitCode: number, stderr: string, timedOut: boolean): string {
  if (timedOut) return `killed after its timeout (exit code ${exitCode})`;
  const last = stderr
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .pop();
  return last ? `${last} (exit code ${exitCode})` : `exited with code ${exitCode}`;
}

const runCode = tool({
  name: 'run_code',
  description:
    'Run a Python, JavaScript (Node.js) or bash script in a sandbox: the code is written to a temporary file and run with python3, node or bash. Returns stdout, stderr, result (stdout without its trailing newline, when the script succeeded) and error (why it failed, when it did). A failing script is a normal result, not a tool error.',
  input: z.object({
    sandbox_id: OptionalSandboxId,
    language: z.enum(['python', 'javascript', 'bash']).describe('python (python3), javascript (node) or bash'),
    code: z.string().min(1).max(LIMITS.maxStdinBytes).describe('The whole script'),
    timeout_ms: RunCommandRequest.shape.timeoutMs.describe('Kill the script after this many ms (0: no limit); default 60000'),
    envs: RunCommandRequest.shape.envs.describe('Extra environment variables for the script'),
  }),
  output: z.object({
    ...SandboxRef,
    language: z.enum(['python', 'javascript', 'bash']),
    exit_code: z.number().int().describe('Exit code of the interpreter; non-zero is not a tool error'),
    stdout: z.string(),
    stderr: z.string(),
    result: z.string().optional().describe('stdout without its trailing newline; present when the script exited 0'),
    error: z.string().optional().describe('Why the script failed (last stderr line and exit code); present when it exited non-zero'),
    timed_out: z.boolean().optional(),
  }),
  annotations: { title: 'Run code', readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false },
  async handler(input, ctx) {
    const lang = LANGUAGES[input.language];
    const ref = await useSandbox(input.sandbox_id, ctx);
    const note = createdNote(ref, ctx.defaultTemplate);
    // Is the interpreter there? Asked separately so that nothing the script prints can fake the answer.
    const probe = await ctx.backend.runCommand(ref.sandbox_id, { cmd: ['/bin/sh', '-c', 'command -v "$0"', lang.interpreter], timeoutMs: 10_000 });
    if (probe.exitCode !== 0) {
      const info = await ctx.backend.getSandbox(ref.sandbox_id).catch(() => undefined);
      throw new InvalidArgumentError(
        `${lang.interpreter} is not installed in sandbox ${ref.sandbox_id}${info ? ` (template ${info.template})` : ''}: ${lang.hint}`,
        { sandboxId: ref.sandbox_id, interpreter: lang.interpreter },
      );
    }
    const file = `/tmp/capsule-code-${randomBytes(6).toString('hex')}.${lang.ext}`;
    await ctx.backend.writeFile(ref.sandbox_id, file, Buffer.from(input.code, 'utf8'), 0o600);
    let r;
    try {
      const onOutput = progressSink(ctx);
      r = await ctx.backend.runCommand(
        ref.sandbox_id,
        { cmd: [lang.interpreter, file], cwd: '/tmp', envs: input.envs, timeoutMs: input.timeout_ms },
        { signal: ctx.signal, ...(onOutput ? { onOutput } : {}) },
      );
    } finally {
      await ctx.backend.removeFile(ref.sandbox_id, file, false).catch(() => undefined);
    }
    const ok = r.exitCode === 0 && !r.timedOut;
    const structured = {
      ...ref,
      language: input.language,
      exit_code: r.exitCode,
      stdout: r.stdout,
      stderr: r.stderr,
      ...(ok ? { result: resultValue(r.stdout) } : { error: errorSummary(r.exitCode, r.stderr, r.timedOut === true) }),
      ...(r.timedOut ? { timed_out: true } : {}),
    };
    const head = ok ? 'Succeeded.' : `Failed: ${errorSummary(r.exitCode, r.stderr, r.timedOut === true)}.`;
    return { structured, text: `${note}${head}\n${outputText(r.stdout, r.stderr)}`, ...(r.timedOut ? { isError: true } : {}) };
  },
});

// --- files ----------------------------------------------------------------------

const DEFAULT_READ_BYTES = 1024 * 1024;
const MAX_READ_BYTES = 16 * 1024 * 1024;

/** Text when the bytes are valid UTF-8, base64 otherwise. */
export function encodeContent(data: Buffer): { encoding: 'utf8' | 'base64'; content: string } {
  try {
    return { encoding: 'utf8', content: new TextDecoder('utf-8', { fatal: true }).decode(data) };
  } catch {
    return { encoding: 'base64', content: data.toString('base64') };
  }
}

const readFile = tool({
  name: 'read_file',
  description: 'Read a file from a sandbox. Text (UTF-8) comes back as is; other bytes come back base64-encoded (encoding says which).',
  input: z.object({
    sandbox_id: OptionalSandboxId,
    path: PathQuery.shape.path.describe('File to read, e.g. /tmp/out.txt'),
    max_bytes: z.number().int().min(1).max(MAX_READ_BYTES).optional().describe('Fail instead of reading a file larger than this; default 1 MiB'),
  }),
  output: z.object({
    ...SandboxRef,
    path: z.string(),
    size: z.number().int().describe('Size in bytes'),
    encoding: z.enum(['utf8', 'base64']).describe('utf8: content is the text; base64: the file is binary'),
    content: z.string(),
  }),
  annotations: { title: 'Read file', readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  async handler(input, ctx) {
    const ref = await useSandbox(input.sandbox_id, ctx);
    const data = await ctx.backend.readFile(ref.sandbox_id, input.path, input.max_bytes ?? DEFAULT_READ_BYTES);
    const enc = encodeContent(data);
    const structured = { ...ref, path: input.path, size: data.length, ...enc };
    return { structured, text: `${createdNote(ref, ctx.defaultTemplate)}${enc.encoding === 'utf8' ? enc.content : `(binary, ${data.length} bytes, base64)\n${enc.content}`}` };
  },
});

const writeFile = tool({
  name: 'write_file',
  description: 'Write a file in a sandbox, creating parent directories and replacing any existing file.',
  input: snakeObject(WriteFileQuery).extend({
    sandbox_id: OptionalSandboxId,
    path: WriteFileQuery.shape.path.describe('File to write, e.g. /tmp/main.py'),
    content: z.string().max(MAX_READ_BYTES * 2).describe('The file\'s content: text, or base64 when encoding is base64'),
    encoding: z.enum(['utf8', 'base64']).optional().describe('How content is encoded; default utf8'),
  }),
  output: z.object({ ...SandboxRef, path: z.string().describe('Absolute path written'), size: z.number().int().describe('Bytes written') }),
  annotations: { title: 'Write file', readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
  async handler(input, ctx) {
    const data = input.encoding === 'base64' ? Buffer.from(input.content, 'base64') : Buffer.from(input.content, 'utf8');
    const ref = await useSandbox(input.sandbox_id, ctx);
    const r = await ctx.backend.writeFile(ref.sandbox_id, input.path, data, input.mode !== undefined ? parseInt(input.mode, 8) : undefined);
    return { structured: { ...ref, path: r.path, size: r.size }, text: `${createdNote(ref, ctx.defaultTemplate)}Wrote ${r.size} bytes to ${r.path}.` };
  },
});

const Entry = snakeObject(FileEntrySchema.pick({ name: true, path: true, type: true, size: true, mtime: true, symlinkTarget: true }));

function entry(e: FileEntry): z.infer<typeof Entry> {
  return { name: e.name, path: e.path, type: e.type, size: e.size, mtime: e.mtime, ...(e.symlinkTarget !== undefined ? { symlink_target: e.symlinkTarget } : {}) };
}

const listFiles = tool({
  name: 'list_files',
  description: 'List the entries of a directory in a sandbox (name, type, size).',
  input: snakeObject(ListFilesQuery).extend({
    sandbox_id: OptionalSandboxId,
    path: ListFilesQuery.shape.path.optional().describe('Directory to list; default /'),
    // JSON numbers here, where the query string needs coercion.
    limit: z.number().int().min(1).max(LIMITS.maxListEntries).optional().describe(ListFilesQuery.shape.limit.description ?? ''),
  }),
  output: z.object({ ...SandboxRef, path: z.string(), entries: z.array(Entry), truncated: z.boolean().describe('True when the directory had more entries than limit') }),
  annotations: { title: 'List files', readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  async handler(input, ctx) {
    const ref = await useSandbox(input.sandbox_id, ctx);
    const path = input.path ?? '/';
    const r = await ctx.backend.listFiles(ref.sandbox_id, path, input.limit ?? LIMITS.defaultListEntries);
    const lines = r.entries.map((e) => `${e.type === 'dir' ? 'd' : e.type === 'symlink' ? 'l' : '-'} ${String(e.size).padStart(10)}  ${e.name}${e.type === 'dir' ? '/' : ''}`);
    if (r.truncated) lines.push('(more entries not shown: raise limit)');
    return {
      structured: { ...ref, path, entries: r.entries.map(entry), truncated: r.truncated },
      text: `${createdNote(ref, ctx.defaultTemplate)}${lines.length ? lines.join('\n') : '(empty directory)'}`,
    };
  },
});

const removeFile = tool({
  name: 'remove_file',
  description: 'Remove a file, or a directory with recursive=true, in a sandbox.',
  input: z.object({
    sandbox_id: OptionalSandboxId,
    path: PathQuery.shape.path.describe('File or directory to remove'),
    // A boolean here; the REST API's query string spells it 'true' / 'false'.
    recursive: z.boolean().optional().describe('Remove a directory and everything in it'),
  }),
  output: z.object({ ...SandboxRef, path: z.string() }),
  annotations: { title: 'Remove file', readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
  async handler(input, ctx) {
    const ref = await useSandbox(input.sandbox_id, ctx);
    await ctx.backend.removeFile(ref.sandbox_id, input.path, input.recursive === true);
    return { structured: { ...ref, path: input.path }, text: `${createdNote(ref, ctx.defaultTemplate)}Removed ${input.path}.` };
  },
});

const makeDir = tool({
  name: 'make_dir',
  description: 'Create a directory and its parents in a sandbox; fine if it already exists.',
  input: snakeObject(MakeDirRequest).extend({ sandbox_id: OptionalSandboxId, path: MakeDirRequest.shape.path.describe('Directory to create, e.g. /work/src') }),
  output: z.object({ ...SandboxRef, path: z.string() }),
  annotations: { title: 'Make directory', readOnlyHint: false, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  async handler(input, ctx) {
    const ref = await useSandbox(input.sandbox_id, ctx);
    await ctx.backend.makeDir(ref.sandbox_id, input.path);
    return { structured: { ...ref, path: input.path }, text: `${createdNote(ref, ctx.defaultTemplate)}Created ${input.path}.` };
  },
});

/** Every tool, in the order tools/list shows them. */
export const TOOLS: readonly ToolDef[] = [
  sandboxCreate,
  sandboxList,
  sandboxKill,
  sandboxSetTimeout,
  runCommand,
  runCode,
  readFile,
  writeFile,
  listFiles,
  removeFile,
  makeDir,
] as unknown as readonly ToolDef[];

/** At most `max` UTF-16 units of `s`, never ending in half of a surrogate pair (an emoji cut in two). */
export function sliceText(s: string, max: number): string {
  if (s.length <= max) return s;
  const last = s.charCodeAt(max - 1);
  return s.slice(0, last >= 0xd800 && last <= 0xdbff ? max - 1 : max);
}

/** The one place where a failure becomes the text of an isError result. */
export function errorText(err: unknown): { code: string; message: string } {
  if (isCapsuleError(err)) return { code: err.code, message: err.message };
  if (err instanceof Error && err.name === 'AbortError') return { code: 'cancelled', message: 'the request was cancelled' };
  return { code: 'internal', message: 'internal error; see the daemon log' };
}
