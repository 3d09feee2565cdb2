/**
 * The code interpreter (src/interpreter): stateful contexts and the cells run in them.
 * REST uses these as they are; the SDK re-exports the types; MCP derives its tool
 * schemas with pick/extend + snakeObject.
 */
import { z } from 'zod';
import { CommandTimeoutMs, EnvVars, LIMITS, SandboxPath, Timestamp } from './common.js';

export const CODE_LIMITS = {
  /** One cell's source. */
  maxCodeBytes: 1024 * 1024,
  /** Live contexts per sandbox (each is a process holding its language's runtime). */
  maxContextsPerSandbox: 16,
  /** Results (the last value and display() calls) one run keeps; more are dropped and counted. */
  maxResults: 64,
  /** One result's data: a larger one is dropped (the driver replaces it by a note first). */
  maxResultBytes: 16 * 1024 * 1024,
  /** All results of one run together. */
  maxRunResultBytes: 32 * 1024 * 1024,
  /** Lines of a traceback, and characters of each. */
  maxTracebackLines: 200,
  maxTracebackLine: 4096,
  defaultOutputBytes: LIMITS.defaultOutputBytes,
} as const;

export const CodeLanguage = z
  .enum(['python', 'javascript', 'typescript', 'bash'])
  .describe('python (IPython), javascript or typescript (Node.js; TypeScript is transpiled, not type-checked), bash (one persistent shell)');
export type CodeLanguage = z.infer<typeof CodeLanguage>;

export const CodeContextId = z
  .string()
  .regex(/^ctx-[a-z0-9]{12}$/, 'a context id looks like ctx-xxxxxxxxxxxx')
  .describe('Code context id, e.g. ctx-4k2m9q0c7d1a');

export const CreateCodeContextRequest = z
  .object({
    language: CodeLanguage.optional().describe('Language of the context; default python'),
    cwd: SandboxPath.optional().describe("Working directory of the interpreter; default the template's (e.g. /home/user)"),
    envs: EnvVars.optional().describe('Environment variables of the interpreter (over the sandbox envs)'),
    user: z.string().min(1).max(64).regex(/^[A-Za-z0-9_.-]+$/).optional().describe("User the interpreter runs as; default the template's user"),
  })
  .strict();
export type CreateCodeContextRequest = z.infer<typeof CreateCodeContextRequest>;

export const CodeContext = z.object({
  id: CodeContextId,
  language: CodeLanguage,
  cwd: z.string().optional().describe('Working directory the interpreter started in'),
  user: z.string().optional().describe('User the interpreter runs as'),
  createdAt: Timestamp,
  default: z.boolean().describe("True for the sandbox's default context of its language (the one runs without a context use)"),
  busy: z.boolean().describe('True while a cell runs'),
  executionCount: z.number().int().describe('Cells run since the interpreter (re)started'),
  restarts: z.number().int().describe('Times the interpreter was restarted (state lost): by a restart call, an interrupt that had to kill, or a crash'),
});
export type CodeContext = z.infer<typeof CodeContext>;
export const ListCodeContextsResponse = z.object({ contexts: z.array(CodeContext) });

export const CodeContextParams = z.object({ id: z.string(), contextId: CodeContextId });

export const RunCodeRequest = z
  .object({
    code: z.string().max(CODE_LIMITS.maxCodeBytes).describe('The cell: one or more statements; the value of a last expression becomes the main result'),
    language: CodeLanguage.optional().describe("Language; default the context's, else python"),
    context: CodeContextId.optional().describe("Context to run in; default the sandbox's default context of the language (created on first use)"),
    envs: EnvVars.optional().describe('Environment variables set for this cell only'),
    timeoutMs: CommandTimeoutMs.optional().describe('Interrupt the cell after this many ms (0: no limit; default 60000): SIGINT first, then, if it does not stop within 2 s, the interpreter is killed and restarted'),
    stream: z.boolean().optional().describe('Stream NDJSON events (start, stdout, stderr, result, executionError, end) instead of one JSON result'),
    maxOutputBytes: z.number().int().min(0).max(LIMITS.maxOutputBytes).optional().describe('Keep at most this many bytes of each of stdout and stderr in the buffered result; default 1 MiB'),
  })
  .strict();
export type RunCodeRequest = z.infer<typeof RunCodeRequest>;

/** One rich result: the representations an object offered, named as in E2B's SDK. */
export const CodeResult = z.object({
  text: z.string().optional().describe('text/plain: the repr'),
  html: z.string().optional().describe('text/html, e.g. a pandas DataFrame'),
  markdown: z.string().optional().describe('text/markdown'),
  svg: z.string().optional().describe('image/svg+xml'),
  png: z.string().optional().describe('image/png, base64 (checked to be a PNG)'),
  jpeg: z.string().optional().describe('image/jpeg, base64 (checked to be a JPEG)'),
  latex: z.string().optional().describe('text/latex'),
  json: z.unknown().optional().describe('application/json: any JSON value'),
  javascript: z.string().optional().describe('application/javascript'),
  isMainResult: z.boolean().describe("True for the value of the cell's last expression (execute_result); false for display() calls and figures"),
  formats: z.array(z.string()).describe('Mime types this result carries, e.g. ["text/plain", "image/png"]'),
});
export type CodeResult = z.infer<typeof CodeResult>;

export const ExecutionError = z.object({
  name: z.string().describe('Exception class, e.g. ZeroDivisionError'),
  value: z.string().describe('Its message'),
  traceback: z.array(z.string()).describe('Traceback lines, plain text, pointing into the cell (e.g. "Cell In[3], line 2")'),
});
export type ExecutionError = z.infer<typeof ExecutionError>;

export const Interrupt = z.object({
  reason: z.enum(['timeout', 'cancelled']).describe('Why: the timeout passed, or the caller went away'),
  how: z.enum(['signal', 'restart']).describe('signal: SIGINT stopped the cell and the context kept its state; restart: it did not stop, so the interpreter was killed and started again (state lost)'),
});

export const RunCodeResult = z.object({
  contextId: CodeContextId,
  language: CodeLanguage,
  executionCount: z.number().int().optional().describe('Number of this cell in its context (In [n])'),
  stdout: z.string().describe('Standard output of the cell (UTF-8)'),
  stderr: z.string(),
  stdoutTruncated: z.boolean().optional().describe('True when stdout exceeded maxOutputBytes and was cut'),
  stderrTruncated: z.boolean().optional(),
  results: z.array(CodeResult).describe('Rich results in the order they were produced'),
  resultsDropped: z.number().int().optional().describe('Results left out because of the count or size limits'),
  error: ExecutionError.optional().describe('The exception that ended the cell'),
  interrupted: Interrupt.optional().describe('Present when the cell was interrupted'),
  restarted: z.boolean().optional().describe('True when the interpreter was (re)started for or by this run and earlier state is gone'),
  durationMs: z.number().describe('Wall time of the cell in the interpreter'),
});
export type RunCodeResult = z.infer<typeof RunCodeResult>;

/** One line of an NDJSON code stream. */
export const CodeEvent = z.discriminatedUnion('type', [
  z.object({ type: z.literal('start'), contextId: CodeContextId, language: CodeLanguage }),
  z.object({ type: z.literal('stdout'), data: z.string() }),
  z.object({ type: z.literal('stderr'), data: z.string() }),
  z.object({ type: z.literal('result'), result: CodeResult }),
  z.object({ type: z.literal('executionError'), error: ExecutionError }),
  z.object({
    type: z.literal('end'),
    executionCount: z.number().int().optional(),
    durationMs: z.number(),
    interrupted: Interrupt.optional(),
    restarted: z.boolean().optional(),
    resultsDropped: z.number().int().optional(),
  }),
  z.object({ type: z.literal('error'), error: z.object({ code: z.string(), message: z.string() }) }),
]);
export type CodeEvent = z.infer<typeof CodeEvent>;
