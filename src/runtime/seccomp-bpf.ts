/**
 * The sandbox's seccomp filter compiled once, instead of by crun on every
 * `crun run` (libseccomp takes 15-25 ms of each create for this profile).
 * crun takes a ready program through the `run.oci.seccomp_bpf_data`
 * annotation (base64 of the raw BPF); native/capsule-seccomp-bpf compiles it
 * with the same libseccomp crun links, following crun's own translation.
 *
 * Results are kept in memory (per policy object) and on disk under
 * `<dataDir>/cache/seccomp/<sha256>.bpf`, keyed by the compiler's input and the
 * tool's and libseccomp's versions, the architecture and the kernel, so a
 * daemon restart costs a file read and an upgrade of any of them a recompile.
 * When the tool is missing or fails, `precompiled()` warns once and answers
 * null: crun then compiles the plain object itself (slower, equally safe).
 * The cache files are trusted like the rest of the data dir (the agent binary
 * next to them is too): root-owned, mode 0600 in a 0700 directory.
 */
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { RuntimeError } from '../errors/index.js';
import type { OciSeccomp } from './seccomp.js';
import { seccompToLines } from './seccomp-lines.js';

export const SECCOMP_BPF_ANNOTATION = 'run.oci.seccomp_bpf_data';

/** Built by scripts/build-native.mjs: dist/native next to dist/src. */
export function defaultSeccompTool(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'native', 'capsule-seccomp-bpf');
}

/** One classic BPF instruction is 8 bytes; the kernel takes at most 4096 of them per filter. */
const INSN_BYTES = 8;
const MAX_INSNS = 4096;
const HOW_TO_BUILD = 'run `npm run build` (needs gcc and libseccomp-dev: apt-get install gcc libseccomp-dev)';

export interface SeccompBpfLogger {
  warn(obj: unknown, msg?: string): void;
}

export interface SeccompBpfOptions {
  /** The compiler binary; default: dist/native/capsule-seccomp-bpf. */
  tool?: string;
  /** Where compiled filters are kept across restarts; null: memory only. */
  cacheDir?: string | null;
  logger?: SeccompBpfLogger;
  timeoutMs?: number;
}

/** A plausible seccomp program: whole instructions, not empty, within the kernel's limit. */
export function isPlausibleBpf(buf: Buffer): boolean {
  return buf.length > 0 && buf.length % INSN_BYTES === 0 && buf.length / INSN_BYTES <= MAX_INSNS;
}

function runTool(tool: string, args: string[], input: string | null, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(tool, args, { stdio: [input === null ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      clearTimeout(timer);
      const missing = (e as NodeJS.ErrnoException).code === 'ENOENT';
      reject(new RuntimeError(`seccomp compiler ${tool} ${missing ? 'is missing' : `cannot run: ${e.message}`}: ${HOW_TO_BUILD}`, { tool }, { cause: e }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve(Buffer.concat(out));
      const why = Buffer.concat(err).toString('utf8').trim().split('\n').slice(-3).join('; ') || `exit ${code ?? signal}`;
      reject(new RuntimeError(`seccomp compiler ${tool} failed: ${why}`, { tool, exitCode: code }));
    });
    if (child.stdin) {
      child.stdin.on('error', () => {}); // an early exit closes the pipe; its stderr says why
      child.stdin.end(input);
    }
  });
}

export class SeccompBpfCompiler {
  readonly tool: string;
  private readonly cacheDir: string | null;
  private readonly log: SeccompBpfLogger | undefined;
  private readonly timeoutMs: number;
  private versionLine: Promise<string> | null = null;
  private readonly byPolicy = new WeakMap<OciSeccomp, Promise<string | null>>();
  private warned = false;

  constructor(opts: SeccompBpfOptions = {}) {
    this.tool = opts.tool ?? defaultSeccompTool();
    this.cacheDir = opts.cacheDir ?? null;
    this.log = opts.logger;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
  }

  /** "capsule-seccomp-bpf 1 libseccomp 2.5.4", asked once. */
  version(): Promise<string> {
    this.versionLine ??= runTool(this.tool, ['--version'], null, this.timeoutMs).then((b) => b.toString('utf8').trim());
    // A failed probe is not cached as a failure forever: the next call asks again.
    this.versionLine.catch(() => {
      this.versionLine = null;
    });
    return this.versionLine;
  }

  /** The program for this policy (from the disk cache or freshly compiled); throws a RuntimeError. */
  async compile(seccomp: OciSeccomp): Promise<Buffer> {
    const lines = seccompToLines(seccomp);
    const key = crypto
      .createHash('sha256')
      .update([await this.version(), os.arch(), os.release(), lines].join('\0'))
      .digest('hex');
    const file = this.cacheDir ? path.join(this.cacheDir, `${key}.bpf`) : null;
    if (file) {
      const cached = await fsp.readFile(file).catch(() => null);
      if (cached && isPlausibleBpf(cached)) return cached;
    }
    const bpf = await runTool(this.tool, [], lines, this.timeoutMs);
    if (!isPlausibleBpf(bpf)) {
      throw new RuntimeError(`seccomp compiler ${this.tool} wrote ${bpf.length} bytes, not a seccomp program`, { tool: this.tool });
    }
    if (file) await this.store(file, bpf);
    return bpf;
  }

  /**
   * Base64 of the compiled program for the annotation, or null when it cannot
   * be had (warned about once): the caller keeps the plain object, which crun
   * compiles itself.
   */
  precompiled(seccomp: OciSeccomp): Promise<string | null> {
    let p = this.byPolicy.get(seccomp);
    if (!p) {
      p = this.compile(seccomp).then(
        (bpf) => bpf.toString('base64'),
        (e: unknown) => {
          if (!this.warned) {
            this.warned = true;
            this.log?.warn(
              { err: e instanceof Error ? e.message : String(e) },
              'seccomp filter not precompiled: crun compiles it on every create (slower, still enforced)',
            );
          }
          return null;
        },
      );
      this.byPolicy.set(seccomp, p);
    }
    return p;
  }

  /** Write-then-rename, so a crash never leaves half a program for the next start to load. */
  private async store(file: string, bpf: Buffer): Promise<void> {
    try {
      await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
      const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`;
      await fsp.writeFile(tmp, bpf, { mode: 0o600 });
      await fsp.rename(tmp, file);
    } catch (e) {
      // The cache only saves time; the program in hand is still good.
      this.log?.warn({ file, err: (e as Error).message }, 'could not cache the compiled seccomp filter');
    }
  }
}

