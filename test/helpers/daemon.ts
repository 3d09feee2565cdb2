/**
 * Test fixture: a real daemon (`capsule serve`) in a child process on a free
 * 127.0.0.1 port with its own temporary data directory.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { spawnServe } from './serve.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export { CLI, REPO_ROOT } from './serve.js';

export interface TestDaemon {
  url: string;
  dataDir: string;
  /** The admin key the daemon made at first start (absent with --no-auth). */
  adminKey: string | undefined;
  child: ChildProcess;
  /** Kill every live sandbox, then SIGTERM the daemon and wait for it. */
  stop(opts?: { keepSandboxes?: boolean; removeDataDir?: boolean }): Promise<void>;
  /** SIGKILL the daemon (sandboxes keep running). */
  kill(): Promise<void>;
  /** Everything the daemon printed to stderr (its log), for failure messages. */
  log(): string;
}

export function tempDataDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-test-'));
}

export async function startTestDaemon(opts: { dataDir?: string; env?: Record<string, string>; args?: string[] } = {}): Promise<TestDaemon> {
  const dataDir = opts.dataDir ?? tempDataDir();
  const { child, url, exited, log } = await spawnServe(dataDir, {
    args: opts.args ?? [],
    env: {
      ...process.env,
      CAPSULE_TEMPLATE_CACHE: process.env.CAPSULE_TEMPLATE_CACHE ?? '/var/cache/capsule-test',
      CAPSULE_LOG_LEVEL: process.env.CAPSULE_LOG_LEVEL ?? 'warn',
      // No warm pool unless a test asks for one (args or env): background refills would
      // skew other tests' timings and container counts. pool.test.ts covers pools.
      CAPSULE_POOL: process.env.CAPSULE_POOL ?? '',
      ...opts.env,
    },
  });
  const keyFile = path.join(dataDir, 'admin.key');
  const adminKey = fs.existsSync(keyFile) ? fs.readFileSync(keyFile, 'utf8').trim() : undefined;
  if (adminKey) {
    KEYS.set(url, adminKey);
    // The SDK and CLI child processes started by tests find it here, as users' programs would.
    process.env.CAPSULE_API_KEY = adminKey;
  }
  const d: TestDaemon = {
    url,
    dataDir,
    adminKey,
    child,
    log,
    async stop(o = {}) {
      if (child.exitCode === null && child.signalCode === null) {
        if (!o.keepSandboxes) await killAllSandboxes(url).catch(() => undefined);
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(t);
      }
      if (o.removeDataDir !== false && !opts.dataDir) await removeDataDir(dataDir);
    },
    async kill() {
      child.kill('SIGKILL');
      await exited;
    },
  };
  return d;
}

/** Admin key of each running test daemon, by URL: api() and authHeaders() use it unless told otherwise. */
const KEYS = new Map<string, string>();

export function authHeaders(url: string): Record<string, string> {
  const key = KEYS.get(url);
  return key ? { authorization: `Bearer ${key}` } : {};
}

export async function killAllSandboxes(url: string): Promise<void> {
  const r = await fetch(`${url}/v1/sandboxes`, { headers: authHeaders(url) });
  const body = (await r.json()) as { sandboxes: Array<{ id: string }> };
  await Promise.all(body.sandboxes.map((s) => fetch(`${url}/v1/sandboxes/${s.id}`, { method: 'DELETE', headers: authHeaders(url) })));
}

/**
 * Templates are owned by shifted uids and may hold read-only dirs; rm -rf as root copes.
 * A daemon that died before cleaning up leaves sandbox mounts (overlay, disk image) below
 * the dir: they are unmounted first (deepest first, lazily), and the dir is kept, not
 * emptied through a mount, if any survives.
 */
export async function removeDataDir(dir: string): Promise<void> {
  const left = unmountBelow(dir);
  if (left.length > 0) {
    console.warn(`removeDataDir: keeping ${dir}: still mounted at ${left.join(', ')}`);
    return;
  }
  await fs.promises.rm(dir, { recursive: true, force: true, maxRetries: 3 }).catch(() => undefined);
}

/** Lazily unmount everything at or below dir, deepest first; returns what is still mounted. */
export function unmountBelow(dir: string): string[] {
  for (const m of mountsBelow(dir).sort((a, b) => b.length - a.length)) {
    spawnSync('umount', ['-l', m], { stdio: 'ignore', timeout: 10_000 });
  }
  return mountsBelow(dir);
}

/** Mount points at or below dir in this process's mount table (octal escapes decoded). */
function mountsBelow(dir: string): string[] {
  const root = path.resolve(dir);
  const out: string[] = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const field = line.split(' ')[4];
    if (!field) continue;
    const m = field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (m === root || m.startsWith(`${root}/`)) out.push(m);
  }
  return out;
}

/** Small JSON-over-HTTP helper for tests that check raw API behaviour. */
export async function api(
  url: string,
  method: string,
  p: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: any; text: string; headers: Headers }> {
  const init: RequestInit = { method, headers: { ...authHeaders(url), ...headers } };
  if (body !== undefined) {
    if (typeof body === 'string' || body instanceof Uint8Array) {
      init.body = body as BodyInit;
    } else {
      init.body = JSON.stringify(body);
      (init.headers as Record<string, string>)['content-type'] = 'application/json';
    }
  }
  const r = await fetch(url + p, init);
  const text = await r.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: r.status, json, text, headers: r.headers };
}
