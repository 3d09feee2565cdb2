/**
 * tuneJit: the daemon's functions reach V8's optimizing compiler after tens of calls, not hundreds
 * (src/jit.ts). Each case runs in its own node process, since the setting is process-wide.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { describe, it } from 'node:test';
import path from 'node:path';
import { promisify } from 'node:util';

const JIT_MODULE = pathToFileURL(path.resolve(import.meta.dirname, '../../src/jit.js')).href;

/**
 * Calls a small function until V8 has decided to optimize it (optimized, or queued for the compiler, which
 * runs on a background thread and takes its own time); prints how many calls that took.
 */
const PROBE = `
if (process.argv[1] === 'tuned') (await import(${JSON.stringify(JIT_MODULE)})).tuneJit();
function work(a) {
  let s = 0;
  for (let i = 0; i < 8; i++) s += (a * i) ^ (s >>> 1);
  return s;
}
let n = 0;
for (; n < 50000; n++) {
  work(n);
  // Status bits: 16 optimized, 256 marked for optimization, 512 marked for concurrent optimization, 1024 compiling.
  if (%GetOptimizationStatus(work) & (16 | 256 | 512 | 1024)) break;
  if (n % 10 === 9) await new Promise((r) => setImmediate(r));
}
console.log(n);
`;

async function callsUntilOptimized(mode: 'tuned' | 'default'): Promise<number> {
  const { stdout } = await promisify(execFile)(process.execPath, ['--allow-natives-syntax', '--input-type=module', '-e', PROBE, mode], { timeout: 60_000 });
  return Number(stdout.trim());
}

describe('jit tuning', () => {
  it('optimizes a hot function after far fewer calls than V8 does by default', async () => {
    const tuned = await callsUntilOptimized('tuned');
    const plain = await callsUntilOptimized('default');
    assert.ok(tuned < 50, `tuned: optimized after ${tuned} calls`);
    assert.ok(tuned * 4 < plain, `tuned ${tuned} calls against ${plain} by default`);
  });
});
