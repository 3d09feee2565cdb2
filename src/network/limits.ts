/**
 * What one sandbox's traffic may cost the daemon: open connections, and new
 * connections plus DNS queries per second (each is a lookup and a ledger write).
 */
import type { SandboxNet } from './gateway.js';

/** Open connections one sandbox may have through the gateway (each holds two of the daemon's descriptors). */
export const MAX_FLOWS_PER_SANDBOX = 256;
/** New connections plus DNS queries per second and sandbox, with bursts up to this many (each is a ledger write). */
export const ATTEMPTS_PER_SECOND = 200;

/** A token bucket per sandbox: a flood of attempts costs the daemon no more than this rate. */
const buckets = new WeakMap<SandboxNet, { tokens: number; at: number }>();
export function takeAttempt(sbx: SandboxNet, now = performance.now()): boolean {
  const b = buckets.get(sbx) ?? { tokens: ATTEMPTS_PER_SECOND, at: now };
  b.tokens = Math.min(ATTEMPTS_PER_SECOND, b.tokens + ((now - b.at) / 1000) * ATTEMPTS_PER_SECOND);
  b.at = now;
  buckets.set(sbx, b);
  if (b.tokens < 1) return false;
  b.tokens -= 1;
  return true;
}

