/**
 * envd's `process.Process` service (spec/envd/process/process.proto in e2b-dev/E2B) in Connect's
 * JSON encoding: requests are parsed here, answers are built with these types. Field names and
 * numbers are E2B's; the limits are Capsule's command schema's.
 */
import { z } from 'zod';
import { EnvVars, LIMITS } from '../common.js';
import { Bytes, Uint32, message, protoEnum } from './proto-json.js';

export const Signal = protoEnum({ SIGNAL_UNSPECIFIED: 0, SIGNAL_SIGTERM: 15, SIGNAL_SIGKILL: 9 });

export const ProcessSelector = message({ pid: Uint32.optional(), tag: z.string().min(1).max(64).optional() }).refine(
  (s) => (s.pid !== undefined) !== (s.tag !== undefined),
  'a process selector names a pid or a tag',
);

const Arg = z.string().max(LIMITS.maxArg);

export const ProcessConfig = message({
  cmd: Arg.min(1),
  args: z.array(Arg).max(LIMITS.maxArgs).optional(),
  envs: EnvVars.optional(),
  cwd: z.string().max(LIMITS.maxPath).optional(),
});

export const PtySize = message({ size: message({ cols: Uint32.pipe(z.number().min(1).max(1000)), rows: Uint32.pipe(z.number().min(1).max(1000)) }) });

export const StartRequest = message({
  process: ProcessConfig,
  pty: PtySize.optional(),
  tag: z.string().min(1).max(64).optional(),
  stdin: z.boolean().optional(),
});
export const ConnectRequest = message({ process: ProcessSelector });
export const ListRequest = message({});
export const UpdateRequest = message({ process: ProcessSelector, pty: PtySize.optional() });
export const SendInputRequest = message({
  process: ProcessSelector,
  input: message({ stdin: Bytes.optional(), pty: Bytes.optional() }),
});
export const SendSignalRequest = message({ process: ProcessSelector, signal: Signal });
export const CloseStdinRequest = message({ process: ProcessSelector });

/** ProcessEvent, as StartResponse/ConnectResponse carry it (`{"event": …}`). */
export type ProcessEvent =
  | { start: { pid: number } }
  | { data: { stdout: string } | { stderr: string } | { pty: string } }
  | { end: { exitCode: number; exited: boolean; status: string; error?: string } }
  | { keepalive: Record<string, never> };

export interface ProcessInfo {
  config: { cmd: string; args: string[]; envs: Record<string, string>; cwd?: string };
  pid: number;
  tag?: string;
}
