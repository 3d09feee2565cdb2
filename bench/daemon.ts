/**
 * The daemon under test: `capsule serve` in a child process on a free
 * 127.0.0.1 port with a temporary data directory of its own.
 */
import fs from 'node:fs';
import path from 'node:path';
import { REPO_ROOT, spawnServe } from '../test/helpers/serve.js';

export { REPO_ROOT };

export interface BenchDaemon {
  url: string;
  dataDir: string;
  pid: number;
  /** The bootstrap admin key (`<data>/admin.key`) when the daemon requires keys; undefined otherwise. */
  apiKey: string | undefined;
  /** Kill every live sandbox (best effort), then SIGTERM and wait (SIGKILL after 10 s). */
  stop(): Promise<void>;
  /** The last part of the daemon's stderr (its log). */
  log(): string;
  /** undefined while the daemon runs; once it has exited, how (code or signal) and the end of its log. */
  death(): string | undefined;
}

/** `args` are extra `capsule serve` flags, e.g. ['--pool', 'busybox=4'] for the warm-pool rows. */
export async function startDaemon(dataDir: string, opts: { args?: string[]; env?: Record<string, string> } = {}): Promise<BenchDaemon> {
  const { child, url, exited, log } = await spawnServe(dataDir, {
    args: opts.args ?? [],
    env: {
      ...process.env,
      CAPSULE_LOG_LEVEL: process.env.CAPSULE_LOG_LEVEL ?? 'warn',
      CAPSULE_TEMPLATE_CACHE: process.env.CAPSULE_TEMPLATE_CACHE ?? '/var/cache/capsule-test',
      // Cold rows must be cold: no pool unless `args` asks for one.
      CAPSULE_POOL: '',
      ...opts.env,
    },
    logBytes: 100_000,
  });
  let stopped = false;
  const keyFile = path.join(dataDir, 'admin.key');
  const apiKey = fs.existsSync(keyFile) ? fs.readFileSync(keyFile, 'utf8').trim() || undefined : undefined;
  return {
    url,
    dataDir,
    apiKey,
    pid: child.pid ?? -1,
    log,
    death: () => {
      const how = child.exitCode !== null ? `exited with code ${child.exitCode}` : child.signalCode !== null ? `killed by ${child.signalCode}` : undefined;
      return how && `${how}; its log ends:\n${log().slice(-3000)}`;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (child.exitCode !== null || child.signalCode !== null) return;
      await killAllSandboxes(url, apiKey).catch(() => undefined);
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    },
  };
}

/**
 * Where a sandbox's agent listens, in the daemon's socket layout (config paths.agentSocket), for the rows that
 * talk to the agent directly; it accepts more than one connection.
 */
export function agentSocketOf(d: BenchDaemon, sandboxId: string): string {
  return path.join(d.dataDir, 'run', `${sandboxId}.sock`);
}

export async function killAllSandboxes(url: string, apiKey?: string): Promise<void> {
  const headers: Record<string, string> = apiKey ? { authorization: `Bearer ${apiKey}` } : {};
  const r = await fetch(`${url}/v1/sandboxes`, { headers });
  const body = (await r.json()) as { sandboxes: Array<{ id: string }> };
  // A few at a time: the daemon serialises on two CPUs anyway.
  const ids = body.sandboxes.map((s) => s.id);
  for (let i = 0; i < ids.length; i += 8) {
    await Promise.all(ids.slice(i, i + 8).map((id) => fetch(`${url}/v1/sandboxes/${id}`, { method: 'DELETE', headers }).then((x) => x.arrayBuffer())));
  }
}
