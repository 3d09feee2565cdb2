/**
 * Hand-written checks for the messages of a command's round trip (the command channel's `run` and
 * its answer, a CommandResult over HTTP), in front of their zod schemas.
 *
 * Why: on a 2-vCPU VM where every message wakes another process, caches are cold at each message and
 * a zod parse of these small objects cost 20-60 µs there (about 1 µs in a hot loop), several percent
 * of an exec round trip each (ADR 0016). These checks touch a few properties instead.
 *
 * The rule that keeps them safe: each accepts only a subset of what its schema accepts (the common
 * shapes, every field checked by the same rule) and returns exactly what the schema's parse returns for
 * it (same keys, same order, same values). Anything else (an unknown or an optional field it does not
 * handle, a value near a bound, a wrong type) makes it answer undefined, and the caller parses with the
 * schema as before, so what is accepted, what is refused and every error message stay the schema's.
 * test/unit/schemas/fast.test.ts compares both on generated inputs.
 */
import { LIMITS, SANDBOX_ID_RE } from './common.js';
import type { ChannelClientMessage, ChannelServerMessage, CommandResult, RunCommandRequest } from './commands.js';

const hasOwn = Object.prototype.hasOwnProperty;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v);
}

/** The schema's Arg: a string of at most LIMITS.maxArg UTF-16 units without NUL. */
function isArg(v: unknown): v is string {
  return typeof v === 'string' && v.length <= LIMITS.maxArg && !v.includes('\0');
}

/** CommandResult's optional booleans, in the schema's order (after `encoding`). */
const RESULT_FLAGS = ['stdoutTruncated', 'stderrTruncated', 'timedOut', 'oomKilled'] as const;
const RESULT_KEYS = new Set(['pid', 'exitCode', 'signal', 'stdout', 'stderr', 'encoding', ...RESULT_FLAGS]);

/** A CommandResult as `CommandResult.parse` returns it, when `v` is one with only its own fields; else undefined. */
export function fastCommandResult(v: unknown): CommandResult | undefined {
  if (!isObject(v)) return undefined;
  let n = 0;
  for (const k in v) {
    if (!hasOwn.call(v, k) || !RESULT_KEYS.has(k)) return undefined;
    n++;
  }
  const { pid, exitCode, signal, stdout, stderr, encoding } = v;
  if (!isInt(pid) || !isInt(exitCode) || typeof stdout !== 'string' || typeof stderr !== 'string') return undefined;
  // Key order as the schema's parse builds it: its shape's order, optional fields only when present.
  const out: Record<string, unknown> = { pid, exitCode };
  let seen = 4;
  if (hasOwn.call(v, 'signal')) {
    if (typeof signal !== 'string') return undefined;
    out.signal = signal;
    seen++;
  }
  out.stdout = stdout;
  out.stderr = stderr;
  if (hasOwn.call(v, 'encoding')) {
    if (encoding !== 'base64') return undefined;
    out.encoding = encoding;
    seen++;
  }
  for (const k of RESULT_FLAGS) {
    if (!hasOwn.call(v, k)) continue;
    if (typeof v[k] !== 'boolean') return undefined;
    out[k] = v[k];
    seen++;
  }
  return seen === n ? (out as CommandResult) : undefined;
}

/** `{id, result}`, the answer to a run on the command channel, as `ChannelServerMessage.parse` returns it; else undefined. */
export function fastChannelAnswer(v: unknown): ChannelServerMessage | undefined {
  if (!isObject(v)) return undefined;
  let n = 0;
  for (const k in v) {
    if (!hasOwn.call(v, k) || (k !== 'id' && k !== 'result')) return undefined;
    n++;
  }
  if (n !== 2 || !isInt(v.id) || v.id < 0) return undefined;
  const result = fastCommandResult(v.result);
  return result ? { id: v.id, result } : undefined;
}

/** `{op: 'run', id, sandboxId, body}` as `ChannelClientMessage.parse` returns it; else undefined (body is not looked at). */
export function fastChannelRun(v: unknown): Extract<ChannelClientMessage, { op: 'run' }> | undefined {
  if (!isObject(v)) return undefined;
  let n = 0;
  for (const k in v) {
    if (!hasOwn.call(v, k) || (k !== 'op' && k !== 'id' && k !== 'sandboxId' && k !== 'body')) return undefined;
    n++;
  }
  const { op, id, sandboxId } = v;
  if (n !== 4 || op !== 'run' || !isInt(id) || id < 0 || typeof sandboxId !== 'string' || sandboxId.length > 512) return undefined;
  return { op, id, sandboxId, body: v.body };
}

/** `{cmd}` alone (a shell string or an argv array), as `RunCommandRequest.parse` returns it; else undefined. */
export function fastRunCommandRequest(v: unknown): RunCommandRequest | undefined {
  if (!isObject(v)) return undefined;
  for (const k in v) if (!hasOwn.call(v, k) || k !== 'cmd') return undefined;
  const cmd = v.cmd;
  if (typeof cmd === 'string') return cmd.length >= 1 && isArg(cmd) ? { cmd } : undefined;
  if (!Array.isArray(cmd) || cmd.length < 1 || cmd.length > LIMITS.maxArgs) return undefined;
  for (let i = 0; i < cmd.length; i++) if (!isArg(cmd[i])) return undefined;
  return { cmd: cmd.slice() as string[] };
}

/** `{id}` path parameters naming a well-formed sandbox id, as `SandboxParams.parse` returns them; else undefined. */
export function fastSandboxParams(id: unknown): { id: string } | undefined {
  return typeof id === 'string' && SANDBOX_ID_RE.test(id) ? { id } : undefined;
}
