/**
 * The daemon's own view of the outside world: how a name becomes addresses and
 * how an address is dialled. Two kinds:
 *
 * - the host's: names through the system resolver (getaddrinfo, so /etc/hosts
 *   and the host's DNS), connections with plain TCP;
 * - a simulated internet, for tests only (CAPSULE_NET_TEST_INTERNET): names from
 *   a fixed table, and only addresses of its route table can be dialled, each
 *   one translated to a host loopback address where the test runs its servers.
 *   Nothing else is ever dialled and no real resolver is ever asked, so even a
 *   broken policy cannot send a packet outside 127.0.0.0/8.
 */
import dns from 'node:dns';
import net from 'node:net';
import { z } from 'zod';
import { parseAddress } from './policy.js';

export const TestInternet = z
  .object({
    hosts: z
      .record(z.string(), z.union([z.string(), z.array(z.string()).max(16)]))
      .describe('Name to address(es) on the simulated internet, e.g. {"allowed.test": "203.0.113.10"}'),
    routes: z
      .record(z.string(), z.string())
      .describe('Simulated address to the host loopback address that serves it, e.g. {"203.0.113.10": "127.0.0.2"}'),
  })
  .strict()
  .superRefine((t, ctx) => {
    for (const [from, to] of Object.entries(t.routes)) {
      if (!parseAddress(from)) ctx.addIssue({ code: 'custom', message: `route ${from}: not an address` });
      const a = parseAddress(to);
      if (!a || a.kind() !== 'ipv4' || a.range() !== 'loopback') ctx.addIssue({ code: 'custom', message: `route ${from} -> ${to}: the target must be in 127.0.0.0/8` });
    }
  });
export type TestInternet = z.infer<typeof TestInternet>;

export interface NetworkEnvironment {
  /** Addresses of a name (empty when it does not exist). */
  resolve(name: string): Promise<string[]>;
  /** A TCP connection to ip:port, or a rejection with a short reason (ECONNREFUSED, ETIMEDOUT, no route...). */
  dial(ip: string, port: number, signal?: AbortSignal): Promise<net.Socket>;
  /** Where a dial to ip actually goes (the same address on the host; the loopback stand-in under a test internet). */
  target(ip: string): string | null;
  readonly simulated: boolean;
}

const CONNECT_TIMEOUT_MS = 10_000;
const CACHE_MS = 30_000;
const NEGATIVE_CACHE_MS = 5_000;

function connect(host: string, port: number, signal?: AbortSignal): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port, noDelay: true, ...(signal ? { signal } : {}) });
    const t = setTimeout(() => s.destroy(Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' })), CONNECT_TIMEOUT_MS);
    s.once('connect', () => {
      clearTimeout(t);
      s.removeAllListeners('error');
      resolve(s);
    });
    s.once('error', (e) => {
      clearTimeout(t);
      reject(e);
    });
  });
}

/** The host's resolver and network, with a small answer cache (lookups run on libuv's thread pool). */
export function hostEnvironment(): NetworkEnvironment {
  const cache = new Map<string, { at: number; addrs: string[] }>();
  return {
    simulated: false,
    async resolve(name) {
      const hit = cache.get(name);
      if (hit && Date.now() - hit.at < (hit.addrs.length ? CACHE_MS : NEGATIVE_CACHE_MS)) return hit.addrs;
      let addrs: string[] = [];
      try {
        addrs = (await dns.promises.lookup(name, { all: true, verbatim: true })).map((a) => a.address);
      } catch {
        addrs = [];
      }
      if (cache.size > 10_000) cache.clear();
      cache.set(name, { at: Date.now(), addrs });
      return addrs;
    },
    target: (ip) => ip,
    dial: (ip, port, signal) => connect(ip, port, signal),
  };
}

export function simulatedEnvironment(t: TestInternet): NetworkEnvironment {
  const hosts = new Map(Object.entries(t.hosts).map(([k, v]) => [k.toLowerCase(), Array.isArray(v) ? v : [v]]));
  const routes = new Map(Object.entries(t.routes).map(([k, v]) => [parseAddress(k)!.toString(), v]));
  return {
    simulated: true,
    resolve: async (name) => hosts.get(name.toLowerCase().replace(/\.$/, '')) ?? [],
    target: (ip) => routes.get(parseAddress(ip)?.toString() ?? '') ?? null,
    async dial(ip, port, signal) {
      const to = routes.get(parseAddress(ip)?.toString() ?? '');
      if (!to) throw Object.assign(new Error(`no route to ${ip} on the simulated internet`), { code: 'ENETUNREACH' });
      return connect(to, port, signal);
    },
  };
}
