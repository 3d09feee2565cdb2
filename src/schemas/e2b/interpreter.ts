/**
 * The code interpreter server that `@e2b/code-interpreter` talks to (template/server in
 * e2b-dev/code-interpreter): /execute streams one JSON object per line; /contexts manages
 * contexts. Languages and limits are Capsule's (src/schemas/code.ts).
 */
import { z } from 'zod';
import { CODE_LIMITS, CodeContextId, CodeLanguage } from '../code.js';
import { EnvVars, SandboxPath } from '../common.js';

/** E2B's short names (js, ts) and any case, onto Capsule's languages. */
export const E2bLanguage = z
  .string()
  .transform((s) => {
    const l = s.trim().toLowerCase();
    return l === 'js' ? 'javascript' : l === 'ts' ? 'typescript' : l;
  })
  .pipe(CodeLanguage);

/**
 * A context id as E2B's clients send it: any short string. One that is not of Capsule's form names
 * no context, which E2B's server answers with 404; `knownContextId` makes that the service's not-found.
 */
const AnyContextId = z.string().min(1).max(128);

export const ExecuteRequest = z
  .object({
    code: z.string().max(CODE_LIMITS.maxCodeBytes),
    context_id: AnyContextId.nullish(),
    language: E2bLanguage.nullish(),
    env_vars: EnvVars.nullish(),
  })
  .passthrough();

export const CreateContextRequest = z
  .object({ language: E2bLanguage.nullish(), cwd: SandboxPath.nullish() })
  .passthrough();

export const ContextParams = z.object({ contextId: AnyContextId });

/** The id as Capsule's, or undefined when it cannot name a context. */
export function knownContextId(id: string): string | undefined {
  return CodeContextId.safeParse(id).success ? id : undefined;
}

export const E2bContext = z.object({ id: z.string(), language: z.string(), cwd: z.string() });

/** One line of /execute's answer. */
export type OutputLine =
  | { type: 'stdout' | 'stderr'; text: string; timestamp: string }
  | ({ type: 'result'; is_main_result: boolean } & Record<string, unknown>)
  | { type: 'error'; name: string; value: string; traceback: string }
  | { type: 'number_of_executions'; execution_count: number }
  | { type: 'end_of_execution' };
