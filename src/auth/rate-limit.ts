/**
 * Per-key request rate: a token bucket that refills continuously, so a key
 * may burst up to a minute's worth and then sustains its per-minute rate.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  /** True when the request may go ahead; false when the key is over its rate. */
  take(keyId: string, perMinute: number, now = Date.now()): boolean {
    const b = this.buckets.get(keyId) ?? { tokens: perMinute, at: now };
    b.tokens = Math.min(perMinute, b.tokens + ((now - b.at) / 60_000) * perMinute);
    b.at = now;
    const ok = b.tokens >= 1;
    if (ok) b.tokens -= 1;
    this.buckets.set(keyId, b);
    return ok;
  }

  forget(keyId: string): void {
    this.buckets.delete(keyId);
  }
}
