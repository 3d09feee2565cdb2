/**
 * Start `capsule serve` in a child process and wait for its one readiness line
 * (`capsule: listening on <url>`). Shared by the test fixture and the bench
 * harness, which both run a real daemon on a free 127.0.0.1 port.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
/** dist/test/helpers → repo root. */
export const REPO_ROOT = path.resolve(here, '..', '..', '..');
export const CLI = path.join(REPO_ROOT, 'bin', 'capsule.js');

export interface ServeProcess {
  child: ChildProcess;
  url: string;
  /** Resolves when the daemon process has exited. */
  exited: Promise<void>;
  /** The last part of what the daemon printed on stderr (its log). */
  log(): string;
}

export async function spawnServe(dataDir: string, opts: { args?: string[]; env?: NodeJS.ProcessEnv; logBytes?: number } = {}): Promise<ServeProcess> {
  const child = spawn(process.execPath, [CLI, 'serve', '--host', '127.0.0.1', '--port', '0', '--data-dir', dataDir, ...(opts.args ?? [])], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: opts.env ?? process.env,
  });
  const keep = opts.logBytes ?? 200_000;
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    stderr = (stderr + d).slice(-keep);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`daemon did not start in 60 s; log:\n${stderr}`)), 60_000);
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      out += d;
      const m = /capsule: listening on (\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`daemon exited with ${child.exitCode} before listening; log:\n${stderr}`));
    });
  });
  return { child, url, exited, log: () => stderr };
}
