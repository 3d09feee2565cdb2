/**
 * Running the OCI runtime binary (`<bin> --root <state> <command> ...`).
 *
 * Two shapes: `runCaptured` for short commands whose output we read (state,
 * list, kill, delete), and `runDetached` for `run -d`, where the container
 * inherits the runtime's stdio — so it never gets pipes (the parent would wait
 * for an EOF that never comes): stdout is /dev/null, stderr a file we read
 * afterwards, and extra fds (the agent socket) are passed by number.
 *
 * With a Launcher (the default in the daemon) both go through
 * `capsule-launcher` instead of Node's spawn(), which forks the whole daemon
 * on its event loop; `run -d` then gets the agent socket made by the launcher
 * itself (`listenPath`), and the container's init is reaped by the launcher.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RuntimeError } from '../errors/index.js';
import type { Launcher } from './launcher.js';

export interface OciResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

export interface OciRunOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Extra environment for the runtime (e.g. CRIU_FAULT for runc's checkpoint and restore). */
  env?: Record<string, string>;
}

export type RuntimeFlavor = 'crun' | 'runc' | 'runsc' | 'other';

/** Which runtime a configured name or path is, by its file name. */
export function runtimeFlavor(runtime: string): RuntimeFlavor {
  const base = path.basename(runtime);
  if (base.startsWith('crun')) return 'crun';
  if (base.startsWith('runc')) return 'runc';
  if (base.startsWith('runsc')) return 'runsc';
  return 'other';
}

/** Absolute path of the runtime binary, or null when it cannot be found. */
export function resolveBinary(runtime: string): string | null {
  const candidates = runtime.includes('/')
    ? [runtime]
    : (process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
        .split(':')
        .filter(Boolean)
        .map((d) => path.join(d, runtime));
  for (const c of candidates) {
    try {
      fs.accessSync(c, fs.constants.X_OK);
      if (fs.statSync(c).isFile()) return c;
    } catch {
      // next
    }
  }
  return null;
}

/** Trim runtime stderr to something that fits in an error message. */
export function summarizeStderr(stderr: string, max = 2000): string {
  const lines: string[] = [];
  for (const raw of stderr.split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    // `--log-format json` lines: {"msg": "...", "level": "error", "time": ...}
    if (line.startsWith('{')) {
      try {
        const j = JSON.parse(line) as { msg?: string; level?: string };
        if (j.msg) {
          lines.push(j.msg);
          continue;
        }
      } catch {
        // not JSON after all
      }
    }
    lines.push(line);
  }
  const text = lines.join('; ');
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

export class OciCli {
  readonly bin: string;
  readonly root: string;
  readonly flavor: RuntimeFlavor;

  constructor(
    runtime: string,
    stateRoot: string,
    /** Runs the runtime for us when given (see the file comment). */
    readonly launcher: Launcher | null = null,
  ) {
    this.bin = resolveBinary(runtime) ?? runtime;
    this.root = stateRoot;
    this.flavor = runtimeFlavor(runtime);
  }

  private async viaLauncher(l: Launcher, args: string[], opts: Parameters<Launcher['run']>[1], env?: Record<string, string>): Promise<OciResult> {
    // The launcher passes its own environment on: extra variables go through env(1).
    const pre = env && Object.keys(env).length > 0 ? ['/usr/bin/env', ...Object.entries(env).map(([k, v]) => `${k}=${v}`)] : [];
    try {
      return await l.run([...pre, this.bin, ...this.argv(args)], opts);
    } catch (e) {
      const err = e as Error;
      if (/not found \(ENOENT\)/.test(err.message)) throw this.spawnError(err);
      throw err;
    }
  }

  private spawnError(e: Error): RuntimeError {
    const pkg = this.flavor === 'other' ? 'crun' : this.flavor;
    return new RuntimeError(`cannot run ${this.bin}: ${e.message}; install it (apt-get install ${pkg}) or set CAPSULE_RUNTIME`, undefined, {
      cause: e,
    });
  }

  private argv(args: string[]): string[] {
    return ['--root', this.root, ...args];
  }

  /** Run a short command, collecting stdout and stderr. Never throws for a non-zero exit; throws on timeout/abort/spawn failure. */
  runCaptured(args: string[], opts: OciRunOptions = {}): Promise<OciResult> {
    const timeoutMs = opts.timeoutMs ?? 30_000;
    if (this.launcher) {
      return this.viaLauncher(this.launcher, args, { captureStdout: true, timeoutMs, ...(opts.signal ? { signal: opts.signal } : {}) }, opts.env);
    }
    const started = performance.now();
    return new Promise<OciResult>((resolve, reject) => {
      if (opts.signal?.aborted) {
        reject(new RuntimeError(`${this.flavor} ${args[0]} aborted`));
        return;
      }
      const child = spawn(this.bin, this.argv(args), { stdio: ['ignore', 'pipe', 'pipe'], ...(opts.env ? { env: { ...process.env, ...opts.env } } : {}) });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let failure: Error | null = null;
      const kill = (why: Error) => {
        failure ??= why;
        child.kill('SIGKILL');
      };
      const timer = setTimeout(
        () => kill(new RuntimeError(`${this.bin} ${args.join(' ')} timed out after ${timeoutMs} ms`)),
        timeoutMs,
      );
      const onAbort = () => kill(new RuntimeError(`${this.flavor} ${args[0]} aborted`));
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      child.stdout.on('data', (b: Buffer) => out.push(b));
      child.stderr.on('data', (b: Buffer) => err.push(b));
      child.on('error', (e) => {
        failure ??= this.spawnError(e);
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        if (failure) {
          reject(failure);
          return;
        }
        resolve({
          code,
          signal,
          stdout: Buffer.concat(out).toString('utf8'),
          stderr: Buffer.concat(err).toString('utf8'),
          ms: performance.now() - started,
        });
      });
    });
  }

  /**
   * Run a command whose children outlive it (`run -d`). stdin/stdout are
   * /dev/null; stderr goes to a temp file that is read once the runtime exits.
   * `extraFds[i]` becomes fd 3+i in the runtime (and, with --preserve-fds, in
   * the container). `onSpawned` runs synchronously right after fork/exec,
   * when the child already holds its copies of the fds.
   *
   * An abort before the start refuses to run; an abort during the run does NOT
   * kill the runtime: killing `run -d` half-way can orphan a container process
   * the runtime has no state for. The caller checks the signal afterwards and
   * deletes what was made. Only the timeout kills.
   *
   * Through the launcher, `listenPath` replaces `extraFds`: the launcher binds
   * the socket there and hands it over as fd 3.
   */
  async runDetached(
    args: string[],
    opts: { timeoutMs?: number; signal?: AbortSignal; env?: Record<string, string> } & { extraFds?: number[]; onSpawned?: () => void; listenPath?: string } = {},
  ): Promise<OciResult> {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    if (opts.signal?.aborted) throw new RuntimeError(`${this.flavor} ${args[0]} aborted`);
    if (this.launcher) {
      return this.viaLauncher(this.launcher, args, {
        stderrToFile: true,
        timeoutMs,
        ...(opts.listenPath ? { listenPath: opts.listenPath } : {}),
      }, opts.env);
    }
    const errFile = path.join(os.tmpdir(), `capsule-oci-${process.pid}-${Math.random().toString(36).slice(2)}.err`);
    const errFd = fs.openSync(errFile, 'w+', 0o600);
    const started = performance.now();
    try {
      const { code, signal, failure } = await new Promise<{
        code: number | null;
        signal: NodeJS.Signals | null;
        failure: Error | null;
      }>((resolve) => {
        const stdio: (number | 'ignore')[] = ['ignore', 'ignore', errFd, ...(opts.extraFds ?? [])];
        let failure: Error | null = null;
        const child = spawn(this.bin, this.argv(args), { stdio, ...(opts.env ? { env: { ...process.env, ...opts.env } } : {}) });
        try {
          opts.onSpawned?.();
        } catch (e) {
          failure = e as Error;
        }
        const kill = (why: Error) => {
          failure ??= why;
          child.kill('SIGKILL');
        };
        const timer = setTimeout(
          () => kill(new RuntimeError(`${this.bin} ${args.join(' ')} timed out after ${timeoutMs} ms`)),
          timeoutMs,
        );
        child.on('error', (e) => {
          failure ??= this.spawnError(e);
        });
        child.on('close', (c, s) => {
          clearTimeout(timer);
          resolve({ code: c, signal: s, failure });
        });
      });
      const stderr = fs.readFileSync(errFile, 'utf8');
      if (failure) throw failure;
      return { code, signal, stdout: '', stderr, ms: performance.now() - started };
    } finally {
      fs.closeSync(errFd);
      fs.rmSync(errFile, { force: true });
    }
  }
}
