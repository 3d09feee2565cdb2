/**
 * The code interpreter from the SDK: `sandbox.runCode(...)` and the context
 * methods on Sandbox delegate here. A cell that raises is not an SDK error:
 * the Execution carries `error` ({name, value, traceback}); errors are for
 * real failures (the sandbox is gone, the language has no runtime there...).
 */
import { UnavailableError, errorFromWire } from '../errors/index.js';
import {
  CodeContext,
  CodeEvent,
  ListCodeContextsResponse,
  RunCodeResult,
  LIMITS,
  type CodeLanguage,
  type CodeResult,
  type ExecutionError,
} from '../schemas/index.js';
import { BoundedOutput } from './commands.js';
import { abortError, isAbortError, type HttpClient } from './http.js';
import { readNdjson } from './ndjson.js';

export type { CodeContext, CodeLanguage, CodeResult, ExecutionError };

/** What a cell produced; `text` is the main result's text/plain (the value of the last expression), when there is one. */
export type Execution = RunCodeResult & { readonly text: string | undefined };

export interface RunCodeOptions {
  /** python (default), javascript, typescript or bash; with `context`, only a check. */
  language?: CodeLanguage;
  /** A context from createCodeContext (or its id); default: the sandbox's default context of the language. */
  context?: CodeContext | string;
  /** Environment variables for this cell only. */
  envs?: Record<string, string>;
  /** Interrupt the cell after this many ms (0: never); default 60 s. SIGINT first, a restart if it will not stop. */
  timeoutMs?: number;
  /** Keep at most this many bytes of each of stdout and stderr in the result; default 1 MiB. Callbacks see everything. */
  maxOutputBytes?: number;
  /** Output as it arrives (switches to a streamed request). */
  onStdout?: (data: string) => void | Promise<void>;
  onStderr?: (data: string) => void | Promise<void>;
  /** Each rich result as it is produced: display() calls, figures, then the last expression's value. */
  onResult?: (result: CodeResult) => void | Promise<void>;
  /** The exception that ended the cell. */
  onError?: (error: ExecutionError) => void | Promise<void>;
  /** Aborting interrupts the cell (SIGINT, then a restart) and rejects with an AbortError. */
  signal?: AbortSignal;
}

export interface CreateCodeContextOptions {
  language?: CodeLanguage;
  /** Working directory of the interpreter; default the template's. */
  cwd?: string;
  /** Environment variables of the interpreter. */
  envs?: Record<string, string>;
  /** User the interpreter runs as; default the template's. */
  user?: string;
}

/** Time a context may take to start (IPython or TypeScript on a cold, busy machine) on top of the cell's own. */
const START_ALLOWANCE_MS = 90_000;

export function execution(r: RunCodeResult): Execution {
  const text = r.results.find((x) => x.isMainResult)?.text;
  return Object.defineProperty({ ...r }, 'text', { value: text, enumerable: false }) as Execution;
}

export class CodeInterpreter {
  private readonly base: string;

  constructor(
    private readonly http: HttpClient,
    sandboxId: string,
  ) {
    this.base = `/sandboxes/${encodeURIComponent(sandboxId)}/code`;
  }

  async run(code: string, opts: RunCodeOptions = {}): Promise<Execution> {
    const body = {
      code,
      language: opts.language,
      context: typeof opts.context === 'string' ? opts.context : opts.context?.id,
      envs: opts.envs,
      timeoutMs: opts.timeoutMs,
      maxOutputBytes: opts.maxOutputBytes,
    };
    const timeoutMs = this.requestTimeout(opts.timeoutMs);
    if (!opts.onStdout && !opts.onStderr && !opts.onResult && !opts.onError && !opts.signal) {
      return execution(await this.http.json('POST', this.base, RunCodeResult, { json: body, timeoutMs }));
    }
    return this.runStreaming(body, opts, timeoutMs);
  }

  async createContext(opts: CreateCodeContextOptions = {}): Promise<CodeContext> {
    return this.http.json('POST', `${this.base}/contexts`, CodeContext, { json: opts, timeoutMs: this.requestTimeout(0) });
  }

  async listContexts(): Promise<CodeContext[]> {
    return (await this.http.json('GET', `${this.base}/contexts`, ListCodeContextsResponse)).contexts;
  }

  async restartContext(context: CodeContext | string): Promise<CodeContext> {
    return this.http.json('POST', `${this.base}/contexts/${encodeURIComponent(idOf(context))}/restart`, CodeContext, { timeoutMs: this.requestTimeout(0) });
  }

  async removeContext(context: CodeContext | string): Promise<void> {
    await this.http.empty('DELETE', `${this.base}/contexts/${encodeURIComponent(idOf(context))}`);
  }

  private requestTimeout(cellTimeoutMs: number | undefined): number {
    const cell = cellTimeoutMs ?? LIMITS.defaultCommandTimeoutMs;
    if (cell === 0 || this.http.conn.requestTimeoutMs === 0) return 0;
    return cell + START_ALLOWANCE_MS + this.http.conn.requestTimeoutMs;
  }

  private async runStreaming(body: Record<string, unknown>, opts: RunCodeOptions, timeoutMs: number): Promise<Execution> {
    const signal = opts.signal;
    if (signal?.aborted) throw abortError(signal);
    const local = new AbortController();
    const onAbort = () => local.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    const what = `POST ${this.base}`;
    const limit = opts.maxOutputBytes ?? LIMITS.defaultOutputBytes;
    const stdout = new BoundedOutput(limit);
    const stderr = new BoundedOutput(limit);
    const results: CodeResult[] = [];
    let error: ExecutionError | undefined;
    let start: { contextId: string; language: CodeLanguage } | undefined;
    try {
      const { body: stream, fail } = await this.http.stream('POST', this.base, { json: { ...body, stream: true }, signal: local.signal, timeoutMs });
      // Results are the daemon's (already bounded); lines hold one result each, images included.
      for await (const ev of readNdjson(stream, CodeEvent, { what, onReadError: fail, maxLineBytes: 64 * 1024 * 1024 })) {
        switch (ev.type) {
          case 'start':
            start = { contextId: ev.contextId, language: ev.language };
            break;
          case 'stdout':
            stdout.append(ev.data);
            await opts.onStdout?.(ev.data);
            break;
          case 'stderr':
            stderr.append(ev.data);
            await opts.onStderr?.(ev.data);
            break;
          case 'result':
            results.push(ev.result);
            await opts.onResult?.(ev.result);
            break;
          case 'executionError':
            error ??= ev.error;
            await opts.onError?.(ev.error);
            break;
          case 'error':
            throw errorFromWire(ev.error.code, ev.error.message);
          case 'end':
            if (!start) throw new UnavailableError(`${what}: the stream ended without its start`);
            return execution({
              ...start,
              ...(ev.executionCount !== undefined ? { executionCount: ev.executionCount } : {}),
              stdout: stdout.toString(),
              stderr: stderr.toString(),
              ...(stdout.truncated ? { stdoutTruncated: true } : {}),
              ...(stderr.truncated ? { stderrTruncated: true } : {}),
              results,
              ...(ev.resultsDropped ? { resultsDropped: ev.resultsDropped } : {}),
              ...(error ? { error } : {}),
              ...(ev.interrupted ? { interrupted: ev.interrupted } : {}),
              ...(ev.restarted ? { restarted: true } : {}),
              durationMs: ev.durationMs,
            });
        }
      }
      throw new UnavailableError(`${what}: the stream ended before the cell's end was reported`);
    } catch (e) {
      if (signal?.aborted && isAbortError(e)) throw abortError(signal);
      throw e;
    } finally {
      signal?.removeEventListener('abort', onAbort);
      local.abort();
    }
  }
}

function idOf(c: CodeContext | string): string {
  return typeof c === 'string' ? c : c.id;
}
