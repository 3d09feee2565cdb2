/**
 * CRIU for memory snapshots (hibernate): which binary, whether it works here,
 * and the few facts about its images the OCI driver needs. Only runc drives
 * CRIU (`runc --criu BIN checkpoint|restore`); crun 1.8.1 has none.
 *
 * - Debian 12's criu 3.17 fails `criu check` on current kernels (vDSO layout);
 *   4.x built from trixie's source package passes (scripts/build-criu.sh,
 *   `capsule doctor --fix`). So a 3.x is reported, not used.
 * - In some VMs a dump hangs forever: CRIU's hardware breakpoint never fires.
 *   `CRIU_FAULT=130` makes it trace syscalls instead (a few ms slower), so every
 *   checkpoint and restore runs with it (`criuEnv`).
 *
 * docs/adr/0018-memory-snapshots.md.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { execFile } from 'node:child_process';

/** A hibernated sandbox's images, under its sandbox dir. */
export const CHECKPOINT_DIR = 'checkpoint';
/** Written into CHECKPOINT_DIR once a dump is complete (JSON: when, how long, how big). */
export const CHECKPOINT_MARKER = 'capsule-hibernated.json';

export interface CriuCheck {
  ok: boolean;
  bin: string | null;
  version: string | null;
  /** Why it is not usable (and how to fix it); set when !ok. */
  reason: string;
}

export const CRIU_CANDIDATES = ['/usr/local/sbin/criu', '/usr/sbin/criu'];

/** The binary to use: `explicit`, else $CAPSULE_CRIU, else the first candidate that exists. */
export function findCriu(explicit?: string): string | null {
  const want = explicit ?? process.env.CAPSULE_CRIU;
  if (want) return fs.existsSync(want) ? want : null;
  return CRIU_CANDIDATES.find((p) => fs.existsSync(p)) ?? null;
}

function run(bin: string, args: string[], timeoutMs: number): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(bin, args, { timeout: timeoutMs, env: { ...process.env, ...criuEnv() } }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, out: `${stdout}${stderr}` });
    });
  });
}

const FIX = 'run `capsule doctor --fix` (or scripts/build-criu.sh) to build CRIU 4 from Debian trixie\'s source package';

/** CRIU 4 present and `criu check` passing (needs root: the daemon runs as root). */
export async function checkCriu(explicit?: string): Promise<CriuCheck> {
  const bin = findCriu(explicit);
  if (!bin) return { ok: false, bin: null, version: null, reason: `CRIU is not installed: ${FIX}` };
  const v = await run(bin, ['--version'], 5000);
  const version = /Version:\s*(\S+)/.exec(v.out)?.[1] ?? null;
  if (!version) return { ok: false, bin, version, reason: `${bin} --version printed no version: ${FIX}` };
  if (Number(version.split('.')[0]) < 4) return { ok: false, bin, version, reason: `${bin} is CRIU ${version}; 3.x fails on this kernel: ${FIX}` };
  if (process.getuid?.() !== 0) return { ok: false, bin, version, reason: 'CRIU needs root: the daemon does not run as root' };
  const c = await run(bin, ['check'], 15_000);
  if (c.code !== 0) return { ok: false, bin, version, reason: `\`${bin} check\` failed: ${c.out.trim().split('\n').slice(-3).join('; ').slice(0, 500)}` };
  return { ok: true, bin, version, reason: '' };
}

/** The environment CRIU needs here (see the file comment). */
export function criuEnv(): Record<string, string> {
  return { CRIU_FAULT: process.env.CAPSULE_CRIU_FAULT ?? '130' };
}

/** The last error lines of a CRIU log in `dir` (dump.log, restore.log), for an error message. */
export async function criuLogTail(dir: string, file: string, lines = 6): Promise<string> {
  try {
    const text = await fsp.readFile(path.join(dir, file), 'utf8');
    const all = text.split('\n').filter((l) => l.trim() !== '');
    const errs = all.filter((l) => /Error|error|fail/i.test(l));
    return (errs.length > 0 ? errs : all).slice(-lines).join(' | ').slice(0, 1500);
  } catch {
    return '';
  }
}
