/**
 * A sandbox's log: what happened to it, as the daemon saw it — its lifecycle (created, running, paused,
 * resumed, stopped, killed, expired, failed, timeouts changed) and its commands (started, ended with exit
 * code or signal, OOM kills, timeouts). Bounded per sandbox (src/sandboxes/events.ts); commands' own
 * output stays with the commands API.
 */
import { z } from 'zod';
import { Timestamp } from './common.js';

export const SandboxLogLevel = z.enum(['debug', 'info', 'warn', 'error']).describe('debug: transitional states and timeout changes; info: states and commands; warn: OOM kills, timeouts, signals; error: failures');
export type SandboxLogLevel = z.infer<typeof SandboxLogLevel>;

export const SandboxLogEntry = z.object({
  seq: z.number().int().describe('Cursor of this entry (increasing)'),
  at: Timestamp.describe('When it happened'),
  level: SandboxLogLevel,
  event: z
    .string()
    .describe('What happened: state.<state> (state.running, state.paused, state.killed, ...), timeout, command.start, command.end'),
  message: z.string().describe('One line for people'),
  fields: z.record(z.string(), z.string()).describe('Details as strings: from, to, reason, pid, cmd, tag, exitCode, signal, oomKilled, timedOut, expiresAt'),
});
export type SandboxLogEntry = z.infer<typeof SandboxLogEntry>;

export const SandboxLogQuery = z
  .object({
    since: z.coerce.number().int().min(0).optional().describe('Cursor: only entries after it (the `cursor` of the previous answer); default 0'),
    limit: z.coerce.number().int().min(1).max(1000).optional().describe('Most entries to return; default 200'),
    level: SandboxLogLevel.optional().describe('Only entries at this level or above; default debug (all)'),
  })
  .strict();
export type SandboxLogQuery = z.infer<typeof SandboxLogQuery>;

export const SandboxLogResponse = z.object({
  entries: z.array(SandboxLogEntry).describe('Oldest first'),
  cursor: z.number().int().describe('Pass as `since` to get what comes next'),
});
export type SandboxLogResponse = z.infer<typeof SandboxLogResponse>;
