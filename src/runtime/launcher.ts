/**
 * Client of `capsule-launcher` (native/capsule-launcher.c): one small helper
 * process that runs the OCI runtime and host tools for the daemon, so the
 * daemon's event loop never blocks forking itself (Node's spawn() forks the
 * whole ~100 MiB daemon: 5–30 ms per call under load), and that reaps the
 * container inits a `run -d` leaves behind.
 *
 * The launcher is started on first use and again after it dies. Everything
 * it answers is parsed defensively (it is ours, but a broken pipe must not
 * crash the daemon). Protocol: see the header of the C file.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { RuntimeError } from '../errors/index.js';

/** Built by scripts/build-native.mjs: dist/src/runtime/launcher.js -> dist/native/capsule-launcher. */
export const LAUNCHER_PATH = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'native', 'capsule-launcher');

export interface LaunchOptions {
  /** Keep stdout (otherwise /dev/null). */
  captureStdout?: boolean;
  /** stderr to a temp file read at exit instead of a pipe: for commands whose children keep stdio open (`run -d`). */
  stderrToFile?: boolean;
  /** Bind and listen on this unix socket path (0600) and hand it to the command as fd 3. */
  listenPath?: string;
  timeoutMs?: number;
  /** Aborting kills the command (SIGKILL). */
  signal?: AbortSignal;
}

export interface LaunchResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

const T_RUN = 1;
const T_KILL = 2;
const T_SNDBUF = 3;
const F_STDOUT = 1;
const F_STDERR_FILE = 2;
/** Responses larger than this are a broken launcher, not output (it caps each stream at 1 MiB). */
const MAX_RESPONSE = 4 * 1024 * 1024;

const SIGNAL_NAMES: Record<number, NodeJS.Signals> = { 1: 'SIGHUP', 2: 'SIGINT', 6: 'SIGABRT', 9: 'SIGKILL', 11: 'SIGSEGV', 13: 'SIGPIPE', 15: 'SIGTERM' };

interface Pending {
  resolve(r: LaunchResult): void;
  reject(e: Error): void;
  started: number;
  argv0: string;
}

export class Launcher {
  private child: ChildProcess | null = null;
  private ready: Promise<void> | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private inbuf: Buffer = Buffer.alloc(0);
  private closed = false;

  constructor(private readonly binary: string) {}

  /** Pid of the running launcher process (for tests and doctor), if started. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Whether the launcher binary exists; callers fall back to spawn() when it does not. */
  static available(binary: string): boolean {
    try {
      fs.accessSync(binary, fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  }

  /** Run `argv` through the launcher. Never rejects for a non-zero exit; rejects on spawn failure, timeout or abort. */
  async run(argv: string[], opts: LaunchOptions = {}): Promise<LaunchResult> {
    if (argv.length === 0) throw new RuntimeError('launcher: empty command');
    if (opts.signal?.aborted) throw new RuntimeError(`${argv[0]} aborted before it started`);
    await this.start();
    const child = this.child;
    if (!child?.stdin) throw new RuntimeError('capsule-launcher is not running');
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    const flags = (opts.captureStdout ? F_STDOUT : 0) | (opts.stderrToFile ? F_STDERR_FILE : 0);
    const strings = [opts.listenPath ?? '', ...argv].map((s) => {
      if (s.includes('\0')) throw new RuntimeError(`launcher: argument contains NUL: ${JSON.stringify(s)}`);
      return Buffer.from(`${s}\0`);
    });
    const body = Buffer.concat([u32s(T_RUN, id, flags), ...strings]);
    const frame = Buffer.concat([u32s(body.length), body]);

    return new Promise<LaunchResult>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      let failure: Error | null = null;
      const kill = (why: Error) => {
        if (failure) {
          // Second strike: it did not die (or its children hold its pipes). Stop waiting.
          this.pending.delete(id);
          if (this.pending.size === 0) this.holdLoop();
          cleanup();
          reject(failure);
          return;
        }
        failure = why;
        this.send(u32s(12, T_KILL, id, 9));
        timer = setTimeout(() => kill(why), 5000);
      };
      const onAbort = () => kill(new RuntimeError(`${argv[0]} ${argv[1] ?? ''} aborted`));
      const cleanup = () => {
        if (timer) clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
      };
      this.pending.set(id, {
        started: performance.now(),
        argv0: argv[0]!,
        resolve: (r) => {
          cleanup();
          if (failure) reject(failure);
          else resolve(r);
        },
        reject: (e) => {
          cleanup();
          reject(e);
        },
      });
      if (opts.timeoutMs) {
        timer = setTimeout(() => kill(new RuntimeError(`${argv.join(' ')} timed out after ${opts.timeoutMs} ms`)), opts.timeoutMs);
      }
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      this.holdLoop();
      this.send(frame);
    });
  }

  /**
   * Stop the launcher and wait for it, so that we (its parent) reap it: left
   * to exit after us it would be a zombie on hosts whose pid 1 does not reap.
   * Containers it started keep running (they are re-parented).
   */
  async close(): Promise<void> {
    this.closed = true;
    const child = this.child;
    this.child = null;
    this.ready = null;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.stdin?.end();
    const t = setTimeout(() => child.kill('SIGKILL'), 1000);
    await exited;
    clearTimeout(t);
  }

  /**
   * Set SO_SNDBUF of one of this process's unix sockets (by descriptor number): Node cannot, and the kernel's
   * ~208 KiB default makes a fast sender wait for the reader every fraction of a millisecond. The launcher
   * does it on a copy of the descriptor (pidfd_getfd of its parent). Rejects when the kernel refuses.
   */
  async setSendBuffer(fd: number, bytes: number): Promise<void> {
    if (!Number.isInteger(fd) || fd < 0 || !Number.isInteger(bytes) || bytes <= 0) throw new RuntimeError(`launcher: bad socket option request (${fd}, ${bytes})`);
    await this.start();
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    await new Promise<void>((resolve, reject) => {
      this.pending.set(id, {
        started: performance.now(),
        argv0: 'setsockopt(SO_SNDBUF)',
        resolve: () => resolve(),
        reject,
      });
      this.holdLoop();
      this.send(u32s(16, T_SNDBUF, id, fd, bytes));
    });
  }

  /** Keep the process alive while jobs are pending, and only then (an idle launcher must not hold a CLI or test open). */
  private holdLoop(): void {
    const c = this.child;
    if (!c) return;
    const busy = this.pending.size > 0;
    for (const h of [c, c.stdout, c.stdin] as Array<{ ref?(): void; unref?(): void } | null>) {
      if (busy) h?.ref?.();
      else h?.unref?.();
    }
  }

  private send(frame: Buffer): void {
    this.child?.stdin?.write(frame);
  }

  private start(): Promise<void> {
    if (this.closed) return Promise.reject(new RuntimeError('launcher closed'));
    if (this.ready) return this.ready;
    this.ready = new Promise<void>((resolve, reject) => {
      const child = spawn(this.binary, [], { stdio: ['pipe', 'pipe', 'inherit'] });
      this.child = child;
      this.inbuf = Buffer.alloc(0);
      let up = false;
      child.on('error', (e) => {
        if (!up) reject(new RuntimeError(`cannot start ${this.binary}: ${e.message}; run npm run build`, undefined, { cause: e }));
      });
      child.stdin!.on('error', () => undefined); // reported through 'exit'
      child.stdout!.on('data', (chunk: Buffer) => {
        this.inbuf = this.inbuf.length === 0 ? chunk : Buffer.concat([this.inbuf, chunk]);
        if (!up) {
          if (this.inbuf.length < 4) return;
          if (this.inbuf.readUInt32LE(0) !== 0) {
            child.kill('SIGKILL');
            reject(new RuntimeError('capsule-launcher said something unexpected at start'));
            return;
          }
          this.inbuf = this.inbuf.subarray(4);
          up = true;
          this.holdLoop();
          resolve();
        }
        this.parse(child);
      });
      child.on('exit', (code, sig) => {
        if (this.child === child) {
          this.child = null;
          this.ready = null;
        }
        const err = new RuntimeError(`capsule-launcher exited (${sig ?? code}); the command's outcome is unknown`);
        if (!up) reject(err);
        for (const p of this.pending.values()) p.reject(err);
        this.pending.clear();
      });
    });
    return this.ready;
  }

  private parse(child: ChildProcess): void {
    while (this.inbuf.length >= 4) {
      const len = this.inbuf.readUInt32LE(0);
      if (len < 20 || len > MAX_RESPONSE) {
        child.kill('SIGKILL'); // a broken stream cannot be resynchronised
        return;
      }
      if (this.inbuf.length < 4 + len) return;
      const f = this.inbuf.subarray(4, 4 + len);
      this.inbuf = this.inbuf.subarray(4 + len);
      const id = f.readUInt32LE(0);
      const code = f.readInt32LE(4);
      const sig = f.readInt32LE(8);
      const errno = f.readInt32LE(12);
      const outLen = Math.min(f.readUInt32LE(16), len - 20);
      const p = this.pending.get(id);
      if (!p) continue;
      this.pending.delete(id);
      if (this.pending.size === 0) this.holdLoop();
      if (errno !== 0) {
        const why = errno === 2 ? 'not found (ENOENT)' : `errno ${errno}`;
        p.reject(new RuntimeError(`cannot run ${p.argv0}: ${why}`, { errno }));
        continue;
      }
      p.resolve({
        code: code >= 0 ? code : null,
        signal: sig > 0 ? (SIGNAL_NAMES[sig] ?? 'SIGKILL') : null,
        stdout: f.subarray(20, 20 + outLen).toString('utf8'),
        stderr: f.subarray(20 + outLen).toString('utf8'),
        ms: performance.now() - p.started,
      });
    }
  }
}

function u32s(...vals: number[]): Buffer {
  const b = Buffer.alloc(4 * vals.length);
  vals.forEach((v, i) => b.writeUInt32LE(v >>> 0, 4 * i));
  return b;
}
