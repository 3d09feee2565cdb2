/**
 * Addresses the daemon's DNS gives a sandbox: each name it may reach gets a
 * stand-in address of its own from 198.18.0.0/15 (RFC 2544's benchmarking
 * range, never routed on the internet), stable for the sandbox's life. A
 * connection to a stand-in tells the gateway which name the sandbox meant, so
 * domain rules hold for any TCP protocol, not only for TLS and HTTP, and the
 * sandbox never learns (or needs) the real addresses, which the daemon resolves
 * itself at connect time.
 */

/** Where the sandbox's resolver answers (inside the range, outside the pool). */
export const RESOLVER_ADDRESS = '198.18.0.53';
const POOL_FIRST = (198 << 24) | (18 << 16) | (1 << 8); // 198.18.1.0
const POOL_SIZE = (2 << 16) - (1 << 8) - 1; // up to 198.19.255.254
/** Names kept per sandbox; past this the oldest is forgotten (its connections then fail as stale). */
export const MAX_NAMES = 16_384;

function toIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export function inStandInRange(ip: string): boolean {
  return /^198\.(18|19)\.\d{1,3}\.\d{1,3}$/.test(ip);
}

export class StandIns {
  private readonly byName = new Map<string, string>();
  private readonly byIp = new Map<string, string>();
  private next = 0;

  /** The stand-in address of `name` (made on first use). */
  forName(name: string): string {
    const hit = this.byName.get(name);
    if (hit) return hit;
    const ip = toIp(POOL_FIRST + (this.next++ % POOL_SIZE));
    const old = this.byIp.get(ip);
    if (old) this.byName.delete(old);
    this.byName.set(name, ip);
    this.byIp.set(ip, name);
    if (this.byName.size > MAX_NAMES) {
      const [oldest, oldIp] = this.byName.entries().next().value as [string, string];
      this.byName.delete(oldest);
      this.byIp.delete(oldIp);
    }
    return ip;
  }

  nameOf(ip: string): string | undefined {
    return this.byIp.get(ip);
  }
}
