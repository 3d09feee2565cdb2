/**
 * `sandbox.network`: the egress policy, the egress ledger and port URLs of one
 * sandbox (REST: /v1/sandboxes/:id/network...). `sandbox.getHost(port)` is on
 * the Sandbox itself, as in E2B.
 */
import type { z } from 'zod';
import { NetworkLogResponse, PortAccess as PortAccessSchema, SandboxNetwork as SandboxNetworkSchema } from '../schemas/index.js';
import type { EgressPolicy, NetworkConfig, NetworkLogEntry, PortAccess, PublicPorts, SandboxNetwork } from '../schemas/index.js';
import type { HttpClient } from './http.js';

export type { EgressPolicy, NetworkConfig, NetworkLogEntry, PortAccess, PublicPorts, SandboxNetwork };

export interface LogOptions {
  /** Cursor: only entries after it (the `cursor` of an earlier answer); default 0. */
  since?: number;
  /** Most entries per answer (1-1000); default 200. */
  limit?: number;
  /** When nothing is newer, wait up to this long (≤ 30000 ms) for an entry. */
  waitMs?: number;
  signal?: AbortSignal;
}

export class Network {
  constructor(
    private readonly http: HttpClient,
    private readonly id: string,
  ) {}

  private path(rest = ''): string {
    return `/sandboxes/${encodeURIComponent(this.id)}/network${rest}`;
  }

  /** The egress policy and public ports. */
  get(): Promise<SandboxNetwork> {
    return this.http.json('GET', this.path(), SandboxNetworkSchema);
  }

  /**
   * Change the egress policy and/or public ports while the sandbox runs: new connections follow at once,
   * open ones the new policy refuses are closed. `set({ egress: { allow: ['deb.debian.org'] } })`.
   */
  set(cfg: NetworkConfig): Promise<SandboxNetwork> {
    return this.http.json('PUT', this.path(), SandboxNetworkSchema, { json: cfg });
  }

  /** One page of the egress ledger after `since`. */
  log(opts: LogOptions = {}): Promise<z.infer<typeof NetworkLogResponse>> {
    const query: Array<[string, string]> = [];
    if (opts.since !== undefined) query.push(['since', String(opts.since)]);
    if (opts.limit !== undefined) query.push(['limit', String(opts.limit)]);
    if (opts.waitMs !== undefined) query.push(['waitMs', String(opts.waitMs)]);
    const timeoutMs = this.http.conn.requestTimeoutMs === 0 ? 0 : this.http.conn.requestTimeoutMs + (opts.waitMs ?? 0);
    return this.http.json('GET', this.path('/log'), NetworkLogResponse, { query, signal: opts.signal, timeoutMs });
  }

  /** Every ledger write from `since` on, as it happens (long polls), until `signal` aborts. */
  async *follow(opts: { since?: number; signal?: AbortSignal } = {}): AsyncGenerator<NetworkLogEntry> {
    let since = opts.since ?? 0;
    while (!opts.signal?.aborted) {
      let page;
      try {
        page = await this.log({ since, waitMs: 25_000, limit: 1000, ...(opts.signal ? { signal: opts.signal } : {}) });
      } catch (e) {
        if (opts.signal?.aborted) return;
        throw e;
      }
      for (const e of page.entries) yield e;
      since = page.cursor;
    }
  }

  /** URLs of a port (host- and path-routed), its token and a signed URL valid for `ttlMs` (default one hour). */
  port(port: number, opts: { ttlMs?: number } = {}): Promise<PortAccess> {
    const query: Array<[string, string]> = opts.ttlMs !== undefined ? [['ttlMs', String(opts.ttlMs)]] : [];
    return this.http.json('GET', this.path(`/ports/${port}`), PortAccessSchema, { query });
  }
}
