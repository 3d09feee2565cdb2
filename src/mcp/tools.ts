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
import { z } from 'zod';
import { isCapsuleError } from '../errors/index.js';
import {
  CodeResult,
  RunCodeRequest,
  RunCodeResult,
  toSnake,
  CommandResult,
  CreateSandboxRequest,
  FileEntry as FileEntrySchema,
  FileMetadata,
  Lifecycle,
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
  WakeSandboxRequest,
  PauseSandboxRequest,
  WriteFileQuery,
  fromSnake,
  NetworkConfig,
  NetworkLogEntry as NetworkLogEntrySchema,
  NetworkLogQuery,
  PortAccess as PortAccessSchema,
  PortParams,
  SandboxNetwork as SandboxNetworkSchema,
  SandboxLogEntry as SandboxLogEntrySchema,
  SandboxLogQuery,
} from '../schemas/index.js';
import type { Sandbox as SandboxInfo, FileEntry } from '../schemas/index.js';
import type { McpBackend } from './backend.js';
import { SNAPSHOT_TOOLS } from './snapshot-tools.js';

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
  /** Pictures shown to the user (MCP image content after the text): base64 data and its mime type. */
  images?: Array<{ data: string; mimeType: string }>;
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
  SandboxSchema.pick({ template: true, state: true, createdAt: true, expiresAt: true, metadata: true, resources: true, endReason: true, isolation: true, timeoutRemainingMs: true }),
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
    ...(s.timeoutRemainingMs !== undefined ? { timeout_remaining_ms: s.timeoutRemainingMs } : {}),
  };
}

/** The sandbox a call acts on: the given one, the session default, or a new one. */
async function useSandbox(id: string | undefined, ctx: ToolContext): Promise<{ sandbox_id: string; sandbox_created?: true }> {
  if (id !== undefined) return { sandbox_id: id };
  const current = ctx.session.defaultSandboxId;
  if (current !== undefined) {
    const info = await ctx.backend.getSandbox(current).catch(() => undefined);
    // A sleeping default with autoResume wakes at the call; without it the session gets a new one.
    if (info?.state === 'running' || (info?.lifecycle.autoResume && (info.state === 'paused' || info.state === 'stopped' || info.state === 'hibernated'))) return { sandbox_id: current };
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
  input: snakeObject(CreateSandboxRequest.pick({ timeoutMs: true, envs: true, metadata: true, resources: true, snapshot: true, isolation: true })).extend({
    lifecycle: snakeObject(Lifecycle).optional().describe(Lifecycle.description ?? ''),
    network: snakeObject(NetworkConfig).optional().describe('Egress policy and public ports; default: no egress (loopback only)'),
    // Without the API's default: the server's default template applies (CAPSULE_MCP_TEMPLATE).
    template: TemplateName.optional().describe(
      'Template to start from: debian (Debian with python3) or busybox (tiny, POSIX sh only). Default: the server\'s default template',
    ),
  }),
  output: SandboxSummary,
  annotations: { title: 'Create sandbox', readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
  async handler(input, ctx) {
    // A snapshot brings its own template.
    const template = input.snapshot !== undefined ? input.template : (input.template ?? ctx.defaultTemplate);
    const info = await ctx.backend.createSandbox(
      {
        template,
        snapshot: input.snapshot,
        timeoutMs: input.timeout_ms,
        envs: input.envs,
        metadata: input.metadata,
        resources: input.resources,
        isolation: input.isolation,
        ...(input.lifecycle ? { lifecycle: fromSnake(input.lifecycle) as Lifecycle } : {}),
        network: networkInput(input.network),
      },
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

/** Pause, resume, stop and start: one tool per verb of the sandbox service, alike but for their words. */
function lifecycleTool(verb: 'pause' | 'resume' | 'stop' | 'start', description: string, done: string) {
  const wakes = verb === 'resume' || verb === 'start';
  return tool({
    name: `sandbox_${verb}`,
    description,
    input: wakes
      ? snakeObject(WakeSandboxRequest).extend({ sandbox_id: SandboxId.describe(`The sandbox to ${verb}`) })
      : verb === 'pause'
        ? snakeObject(PauseSandboxRequest).extend({ sandbox_id: SandboxId.describe(`The sandbox to ${verb}`) })
        : z.object({ sandbox_id: SandboxId.describe(`The sandbox to ${verb}`) }),
    output: SandboxSummary,
    annotations: { title: `${verb[0]!.toUpperCase()}${verb.slice(1)} sandbox`, readOnlyHint: false, destructiveHint: verb === 'stop', idempotentHint: true, openWorldHint: false },
    async handler(input, ctx) {
      const timeoutMs = 'timeout_ms' in input ? (input.timeout_ms as number | undefined) : undefined;
      const memory = 'memory' in input ? (input.memory as 'keep' | 'disk' | undefined) : undefined;
      const info = await ctx.backend.lifecycle(input.sandbox_id, verb, { ...(timeoutMs !== undefined ? { timeoutMs } : {}), ...(memory !== undefined ? { memory } : {}) });
      return { structured: summary(info), text: `Sandbox ${info.id} is ${info.state}${done}.` };
    },
  });
}

const sandboxPause = lifecycleTool(
  'pause',
  "Pause a running sandbox: every process is frozen where it is (memory kept, no CPU) and its timeout clock stops; memory 'disk' hibernates it instead (processes and memory written to disk, memory freed; needs capabilities.memorySnapshot). Commands and file calls then fail unless it was created with lifecycle.auto_resume. Resume with sandbox_resume.",
  '; sandbox_resume continues it',
);
const sandboxResume = lifecycleTool(
  'resume',
  'Resume a paused or hibernated sandbox: its processes continue exactly where they were, with the lifetime it had left (or timeout_ms).',
  '',
);
const sandboxStop = lifecycleTool(
  'stop',
  'Stop a running or paused sandbox: its processes end and its memory is freed, but its files, envs and metadata are kept. Start it again with sandbox_start.',
  '; its files are kept for sandbox_start',
);
const sandboxStart = lifecycleTool(
  'start',
  'Start a stopped sandbox again: same id and files, no processes running yet, with the lifetime it had left (or timeout_ms).',
  '',
);
// --- network --------------------------------------------------------------------

function networkInput(n: { egress?: NetworkConfig['egress'] | undefined; public_ports?: NetworkConfig['publicPorts'] | undefined } | undefined): NetworkConfig | undefined {
  if (!n) return undefined;
  return { ...(n.egress !== undefined ? { egress: n.egress } : {}), ...(n.public_ports !== undefined ? { publicPorts: n.public_ports } : {}) };
}

const NetworkOutput = snakeObject(SandboxNetworkSchema).extend({ sandbox_id: SandboxId });

const sandboxSetNetwork = tool({
  name: 'sandbox_set_network',
  description:
    "Change a running sandbox's egress policy (none, all, or allow/deny rules such as pypi.org, *.npmjs.org, 10.0.0.0/8, *:443) and/or its public ports. New connections follow it at once; open ones it refuses are closed.",
  input: snakeObject(NetworkConfig).extend({ sandbox_id: SandboxId.describe('The sandbox to change') }),
  output: NetworkOutput,
  annotations: { title: 'Set sandbox network', readOnlyHint: false, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  async handler(input, ctx) {
    const n = await ctx.backend.setNetwork(input.sandbox_id, networkInput(input) ?? {});
    const egress = typeof n.egress === 'string' ? n.egress : `allow ${n.egress.allow.join(', ')}${n.egress.deny?.length ? `; deny ${n.egress.deny.join(', ')}` : ''}`;
    return { structured: { ...(toSnake(n) as z.infer<typeof NetworkOutput>), sandbox_id: input.sandbox_id }, text: `Sandbox ${input.sandbox_id} egress: ${egress}.` };
  },
});

const LogEntryOutput = snakeObject(NetworkLogEntrySchema);

const sandboxNetworkLog = tool({
  name: 'sandbox_network_log',
  description: "What a sandbox tried to reach: its egress ledger of connections and DNS lookups, each allowed or refused with the rule, process and bytes. Pass the returned cursor as since to get only newer entries.",
  input: snakeObject(NetworkLogQuery.pick({ since: true, limit: true })).extend({ sandbox_id: SandboxId.describe('The sandbox whose ledger to read') }),
  output: z.object({ entries: z.array(LogEntryOutput), cursor: z.number().describe('Pass as since next time') }),
  annotations: { title: 'Sandbox network log', readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  async handler(input, ctx) {
    const r = await ctx.backend.networkLog(input.sandbox_id, { since: input.since, limit: input.limit });
    const lines = r.entries.map((e) => `${e.at} ${e.verdict} ${e.protocol} ${e.name ?? ''} ${e.address ?? ''}:${e.port ?? ''} ${e.command ?? ''} (${e.rule})`);
    return {
      structured: { entries: r.entries.map((e) => toSnake(e) as z.infer<typeof LogEntryOutput>), cursor: r.cursor },
      text: lines.length ? lines.join('\n') : 'No entries.',
    };
  },
});

const SandboxLogOutput = snakeObject(SandboxLogEntrySchema);

const sandboxLogs = tool({
  name: 'sandbox_logs',
  description:
    "What happened to a sandbox: created, running, paused, resumed, stopped, killed, expired or failed (with the reason), and each command started and ended with its exit code, signal, OOM kill or timeout. Oldest first; pass the returned cursor as since to get only newer entries; level keeps that level and above.",
  input: snakeObject(SandboxLogQuery).extend({ sandbox_id: SandboxId.describe('The sandbox whose log to read') }),
  output: z.object({ entries: z.array(SandboxLogOutput), cursor: z.number().describe('Pass as since next time') }),
  annotations: { title: 'Sandbox log', readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  async handler(input, ctx) {
    const r = await ctx.backend.logs(input.sandbox_id, { since: input.since, limit: input.limit, level: input.level });
    return {
      structured: { entries: r.entries.map((e) => toSnake(e) as z.infer<typeof SandboxLogOutput>), cursor: r.cursor },
      text: r.entries.length ? r.entries.map((e) => `${e.at} ${e.level} ${e.message}`).join('\n') : 'No entries.',
    };
  },
});

const sandboxPortUrl = tool({
  name: 'sandbox_port_url',
  description:
    'URLs that reach a server listening on a port inside a sandbox (HTTP and WebSocket, forwarded by the daemon): a host-routed and a path-routed URL, the token to send as X-Capsule-Port-Token, and a signed URL for browsers.',
  input: z.object({ sandbox_id: SandboxId.describe('The sandbox'), port: PortParams.shape.port }),
  output: snakeObject(PortAccessSchema),
  annotations: { title: 'Sandbox port URL', readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  async handler(input, ctx) {
    const a = await ctx.backend.portAccess(input.sandbox_id, input.port);
    return { structured: toSnake(a) as never, text: `${a.url} (token ${a.token}; signed: ${a.signedUrl})` };
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

/** A rich result in snake_case; images travel as MCP image content instead (see run_code). */
const CodeResultOut = snakeObject(CodeResult.pick({ text: true, html: true, markdown: true, svg: true, latex: true, json: true, isMainResult: true, formats: true }));

/** The text an MCP client shows for a cell: output, result texts, the error. */
function codeText(r: RunCodeResult, images: number): string {
  const parts: string[] = [];
  if (r.stdout) parts.push(`stdout:\n${r.stdout}`);
  if (r.stderr) parts.push(`stderr:\n${r.stderr}`);
  for (const x of r.results) {
    const t = x.text ?? x.markdown ?? (x.json !== undefined ? JSON.stringify(x.json) : undefined);
    if (t !== undefined && (x.isMainResult || (x.png === undefined && x.jpeg === undefined))) parts.push(`${x.isMainResult ? 'result' : 'display'}:\n${t}`);
  }
  if (images) parts.push(`(${images} image${images > 1 ? 's' : ''} attached)`);
  if (r.error) parts.push(`error:\n${r.error.traceback.length ? r.error.traceback.join('\n') : `${r.error.name}: ${r.error.value}`}`);
  if (r.interrupted) {
    parts.push(
      `interrupted (${r.interrupted.reason}): ${r.interrupted.how === 'signal' ? 'the context kept its state' : 'the interpreter was restarted; its state is gone'}`,
    );
  }
  return parts.length ? parts.join('\n') : '(no output)';
}

const runCode = tool({
  name: 'run_code',
  description:
    'Run Python, JavaScript, TypeScript or bash code in a stateful context, like a notebook cell: variables, imports, functions (and for bash the working directory and exports) persist between calls in the same sandbox and language. Returns stdout, stderr, rich results (the last expression\'s value, display() calls; matplotlib figures and other images come back as image content) and the error with its traceback. A cell that raises is a normal result, not a tool error. The python template has IPython, numpy, pandas, matplotlib, scipy and Node.js; other templates need python3 (or node) and give plain-text results only.',
  input: snakeObject(RunCodeRequest.pick({ language: true, envs: true, timeoutMs: true })).extend({
    sandbox_id: OptionalSandboxId,
    code: RunCodeRequest.shape.code.min(1),
    context_id: RunCodeRequest.shape.context,
  }),
  output: z.object({
    ...SandboxRef,
    ...snakeObject(RunCodeResult.pick({ contextId: true, language: true, executionCount: true, stdout: true, stderr: true, error: true, interrupted: true, restarted: true })).shape,
    results: z.array(CodeResultOut).describe('Rich results in order; png/jpeg data is in the image content blocks, in the same order'),
    truncated: z.boolean().optional().describe('True when stdout or stderr was cut, or results were left out'),
  }),
  annotations: { title: 'Run code', readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false },
  async handler(input, ctx) {
    const ref = await useSandbox(input.sandbox_id, ctx);
    const note = createdNote(ref, ctx.defaultTemplate);
    const onOutput = progressSink(ctx);
    const r = await ctx.backend.runCode(
      ref.sandbox_id,
      { code: input.code, language: input.language, context: input.context_id, envs: input.envs, timeoutMs: input.timeout_ms },
      { signal: ctx.signal, ...(onOutput ? { onOutput } : {}) },
    );
    const images = r.results.flatMap((x) => [
      ...(x.png !== undefined ? [{ data: x.png, mimeType: 'image/png' }] : []),
      ...(x.jpeg !== undefined ? [{ data: x.jpeg, mimeType: 'image/jpeg' }] : []),
    ]);
    const structured = {
      ...ref,
      context_id: r.contextId,
      language: r.language,
      ...(r.executionCount !== undefined ? { execution_count: r.executionCount } : {}),
      stdout: r.stdout,
      stderr: r.stderr,
      // Parsing drops what the picked schema lacks: the images (sent as image content) and javascript.
      results: r.results.map((x) => CodeResultOut.parse(toSnake(x))),
      ...(r.error ? { error: r.error } : {}),
      ...(r.interrupted ? { interrupted: r.interrupted } : {}),
      ...(r.restarted ? { restarted: true } : {}),
      ...(r.stdoutTruncated || r.stderrTruncated || r.resultsDropped ? { truncated: true } : {}),
    };
    return {
      structured,
      text: `${note}${codeText(r, images.length)}`,
      images,
      ...(r.interrupted?.reason === 'timeout' ? { isError: true } : {}),
    };
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
    // An object here, where the REST query carries it as JSON text.
    metadata: FileMetadata.optional(),
    content: z.string().max(MAX_READ_BYTES * 2).describe('The file\'s content: text, or base64 when encoding is base64'),
    encoding: z.enum(['utf8', 'base64']).optional().describe('How content is encoded; default utf8'),
  }),
  output: z.object({
    ...SandboxRef,
    path: z.string().describe('Absolute path written'),
    size: z.number().int().describe('Bytes written'),
    metadata: FileMetadata.optional().describe('The metadata the write set, when it was given one'),
  }),
  annotations: { title: 'Write file', readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
  async handler(input, ctx) {
    const data = input.encoding === 'base64' ? Buffer.from(input.content, 'base64') : Buffer.from(input.content, 'utf8');
    const ref = await useSandbox(input.sandbox_id, ctx);
    const r = await ctx.backend.writeFile(ref.sandbox_id, input.path, data, {
      ...(input.mode !== undefined ? { mode: parseInt(input.mode, 8) } : {}),
      ...(input.metadata !== undefined ? { metadata: input.metadata } : {}),
    });
    return { structured: { ...ref, path: r.path, size: r.size, ...(r.metadata ? { metadata: r.metadata } : {}) }, text: `${createdNote(ref, ctx.defaultTemplate)}Wrote ${r.size} bytes to ${r.path}.` };
  },
});

const Entry = snakeObject(FileEntrySchema.pick({ name: true, path: true, type: true, size: true, mtime: true, symlinkTarget: true, metadata: true }));

function entry(e: FileEntry): z.infer<typeof Entry> {
  return {
    name: e.name,
    path: e.path,
    type: e.type,
    size: e.size,
    mtime: e.mtime,
    ...(e.symlinkTarget !== undefined ? { symlink_target: e.symlinkTarget } : {}),
    ...(e.metadata !== undefined ? { metadata: e.metadata } : {}),
  };
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
  sandboxPause,
  sandboxResume,
  sandboxStop,
  sandboxStart,
  ...SNAPSHOT_TOOLS,
  runCommand,
  runCode,
  readFile,
  writeFile,
  listFiles,
  removeFile,
  makeDir,
  sandboxSetNetwork,
  sandboxNetworkLog,
  sandboxPortUrl,
  sandboxLogs,
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
