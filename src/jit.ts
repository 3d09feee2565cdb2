/**
 * How soon V8 compiles the daemon's hot paths with its optimizing compiler (applied once, when the daemon starts).
 *
 * V8 first runs a function in its interpreter and baseline tier, and optimizes it once it has run through
 * an "interrupt budget" of bytecode a few times (by default ~66 KiB, three times). A command's round
 * trip crosses some hundred small functions (channel message, auth, service, agent frames, answer), each
 * running a few hundred bytes of bytecode per command, so with the default budget they stay unoptimized
 * for the first several hundred commands of a daemon's life: the bench's 300 runs after 5 warm-ups measured
 * the SDK's exec at 1.55-1.62x the agent alone, against 1.35-1.40x after 1,000 warm-up runs (ADR 0016).
 * A budget of 8 KiB optimizes them after some tens of calls instead: 1.40-1.45x in the same bench. Lower
 * budgets buy little more and cost the first requests of a young daemon: at 2 KiB exec reached 1.37-1.42x,
 * but sandbox creates from a warm pool took 7.6-9.0 ms instead of 6.2-6.8 (compiling while they ran), which
 * 8 KiB leaves at 6.5-6.8. GET latency with 1,000 sandboxes fell (0.41 to 0.19 ms at 2 KiB), and no row of
 * sustained, density, files or interactive moved beyond the noise. What it costs: more functions reach the
 * optimizing compiler (on a background thread) early in the daemon's life, and a few deoptimize once.
 */
import v8 from 'node:v8';

/** Bytecode a function runs through (times V8's tick count, 3) before it is considered for optimization. */
export const INTERRUPT_BUDGET = 8192;

let tuned = false;

export function tuneJit(): void {
  if (tuned) return;
  tuned = true;
  v8.setFlagsFromString(`--interrupt-budget=${INTERRUPT_BUDGET}`);
}
