/**
 * A second daemon with a warm pool, for the warm-pool rows (ttfc.warm-pool,
 * burst from a warm pool). The main bench daemon has no pool, so its rows
 * stay cold; this one runs next to it, in the same work directory (cleaned
 * up with it), only while its scenario runs.
 */
import path from 'node:path';
import type { ConnectionOptions } from '../src/sdk/index.js';
import type { InfoResponse } from '../src/schemas/info.js';
import type { BenchContext } from './context.js';
import { startDaemon } from './daemon.js';

/** One pool's counters, as GET /v1/info reports them. */
export type PoolState = InfoResponse['pools'][number];

export interface PoolDaemon {
  conn: ConnectionOptions;
  /** The pool's counters from GET /v1/info. */
  state(): Promise<PoolState>;
  /** Resolves once the pool holds `n` ready sandboxes and is not starting one (not timed by callers). */
  filled(n: number, timeoutMs?: number): Promise<void>;
}

export async function withPoolDaemon<T>(
  ctx: BenchContext,
  name: string,
  pool: { template: string; size: number },
  fn: (pd: PoolDaemon) => Promise<T>,
): Promise<T> {
  const dataDir = path.join(path.dirname(ctx.daemon.dataDir), `data-${name}`);
  const d = await startDaemon(dataDir, { args: ['--pool', `${pool.template}=${pool.size}`] });
  const headers: Record<string, string> = d.apiKey ? { authorization: `Bearer ${d.apiKey}` } : {};
  const pd: PoolDaemon = {
    conn: { apiUrl: d.url, ...(d.apiKey ? { apiKey: d.apiKey } : {}) },
    async state() {
      const r = await fetch(`${d.url}/v1/info`, { headers });
      if (!r.ok) throw new Error(`GET /v1/info: ${r.status} ${await r.text()}`);
      const body = (await r.json()) as { pools: PoolState[] };
      const p = body.pools.find((x) => x.template === pool.template);
      if (!p) throw new Error(`the daemon reports no pool for ${pool.template}`);
      return p;
    },
    async filled(n, timeoutMs = 120_000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const p = await pd.state();
        if (p.ready >= n && !p.starting) return;
        if (Date.now() > end) throw new Error(`pool did not refill to ${n} in ${timeoutMs} ms: ${JSON.stringify(p)}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
  };
  try {
    return await fn(pd);
  } catch (e) {
    // A daemon that died takes its reason with it unless its log is kept: say how it ended.
    const death = d.death();
    if (death && e instanceof Error) e.message += ` (the ${name} daemon ${death})`;
    throw e;
  } finally {
    await d.stop();
  }
}
