/**
 * Child processes for the baselines. `run` resolves with the exit code and
 * (optionally) captured output; it never rejects for a non-zero exit.
 */
import { spawn } from 'node:child_process';

export interface ProcResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface ProcOptions {
  /** Capture stdout/stderr through pipes (default: ignore both; detached runtimes must never get pipes). */
  capture?: boolean;
  /** Bytes written to stdin, which is then closed. */
  stdin?: Uint8Array;
  /** Collect stdout as raw bytes here (implies capture). */
  stdoutBytes?: Buffer[];
  timeoutMs?: number;
}

export function run(cmd: string, args: string[], opts: ProcOptions = {}): Promise<ProcResult> {
  return new Promise((resolve, reject) => {
    const capture = opts.capture === true || opts.stdoutBytes !== undefined;
    const child = spawn(cmd, args, {
      stdio: [opts.stdin ? 'pipe' : 'ignore', capture ? 'pipe' : 'ignore', capture ? 'pipe' : 'ignore'],
    });
    const out: Buffer[] = opts.stdoutBytes ?? [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    if (opts.stdin && child.stdin) {
      child.stdin.on('error', () => undefined);
      child.stdin.end(opts.stdin);
    }
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({
        code,
        signal,
        stdout: opts.stdoutBytes ? '' : Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      });
    });
  });
}

/** Like run, but throws when the exit is not 0. */
export async function runOk(cmd: string, args: string[], opts: ProcOptions = {}): Promise<ProcResult> {
  const r = await run(cmd, args, { capture: true, ...opts });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code ?? r.signal}: ${r.stderr.trim().slice(0, 500)}`);
  return r;
}
