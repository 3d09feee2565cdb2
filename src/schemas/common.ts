/**
 * Building blocks shared by every API schema. Each field carries a
 * description: the same text feeds request validation, the OpenAPI document
 * and (later) MCP tool schemas.
 */
import { z } from 'zod';

export const SANDBOX_ID_RE = /^sbx-[a-z0-9]{12}$/;

export const SandboxId = z
  .string()
  .regex(SANDBOX_ID_RE, 'a sandbox id looks like sbx-xxxxxxxxxxxx')
  .describe('Sandbox id, e.g. sbx-4k2m9q0c7d1a');

const noNul = (s: string) => !s.includes('\0');

/** Limits that keep one request from costing the daemon unbounded memory. */
export const LIMITS = {
  maxEnvs: 256,
  maxEnvKey: 256,
  maxEnvValue: 32 * 1024,
  maxMetadata: 64,
  maxMetadataKey: 128,
  maxMetadataValue: 1024,
  maxPath: 4096,
  maxArgs: 4096,
  maxArg: 128 * 1024,
  maxStdinBytes: 8 * 1024 * 1024,
  defaultOutputBytes: 1024 * 1024,
  maxOutputBytes: 16 * 1024 * 1024,
  defaultCommandTimeoutMs: 60_000,
  maxListEntries: 100_000,
  defaultListEntries: 10_000,
} as const;

export const EnvVars = z
  .record(
    z.string().min(1).max(LIMITS.maxEnvKey).regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'environment variable names are letters, digits and _'),
    z.string().max(LIMITS.maxEnvValue).refine(noNul, 'must not contain NUL'),
  )
  .refine((r) => Object.keys(r).length <= LIMITS.maxEnvs, `at most ${LIMITS.maxEnvs} variables`)
  .describe('Environment variables, name to value');

export const Metadata = z
  .record(
    z.string().min(1).max(LIMITS.maxMetadataKey).regex(/^[A-Za-z0-9_.\-]+$/, 'metadata keys are letters, digits, _ . -'),
    z.string().max(LIMITS.maxMetadataValue).refine(noNul, 'must not contain NUL'),
  )
  .refine((r) => Object.keys(r).length <= LIMITS.maxMetadata, `at most ${LIMITS.maxMetadata} entries`)
  .describe('Free-form string labels; filter on them when listing');

/** A path inside the sandbox. Relative paths are taken relative to "/". */
export const SandboxPath = z
  .string()
  .min(1)
  .max(LIMITS.maxPath)
  .refine(noNul, 'must not contain NUL')
  .describe('Path inside the sandbox; relative paths are relative to /');

/** Names of templates: lowercase, as they become directory names. */
export const TemplateName = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[a-z0-9][a-z0-9._-]*$/, 'template names are lowercase letters, digits, . _ - (starting with a letter or digit)')
  .describe('Template to start from (see GET /v1/templates)');

/** A sandbox's lifetime from now. */
export const SandboxTimeoutMs = z.number().int().min(1000).describe('Lifetime in ms from now before the sandbox is killed');

/** How long a command may run. */
export const CommandTimeoutMs = z
  .number()
  .int()
  .min(0)
  .max(24 * 3600_000)
  .describe('Kill the command after this many ms (0: no limit); default 60000 for foreground commands, none for background ones');

/** Permission bits as octal digits, the way chmod takes them. */
export const FileMode = z.string().regex(/^[0-7]{3,4}$/, 'mode is octal, e.g. 644').describe('Permission bits in octal, e.g. 755 for a script; default 644');

export const ErrorBody = z
  .object({
    error: z.object({
      code: z.string().describe('Stable machine-readable code, e.g. not_found'),
      message: z.string().describe('What went wrong and, where known, how to fix it'),
      details: z.record(z.string(), z.unknown()).optional(),
    }),
  })
  .describe('Every error the API returns has this shape');

export const Timestamp = z.string().describe('ISO 8601 timestamp');
