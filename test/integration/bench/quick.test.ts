/**
 * The benchmark harness end to end: `node dist/bench/main.js --quick --out DIR`
 * must exit 0 and write a JSON report naming every scenario. Timings are
 * never asserted (they depend on the host); only that the harness works and
 * cleans up after itself.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { REPO_ROOT } from '../../helpers/daemon.js';

const MAIN = path.join(REPO_ROOT, 'dist', 'bench', 'main.js');
const SCENARIO_NAMES = ['ttfc', 'exec', 'sustained', 'density', 'files', 'templates', 'lifecycle', 'interactive', 'network', 'code', 'e2b', 'gvisor', 'microvm', 'hibernate'];

describe('bench --quick', () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-bench-test-'));
  after(() => fs.rmSync(out, { recursive: true, force: true }));

  // About 4 minutes on a busy 2-core host, microVM boots under emulation included (~25 s).
  it('runs every scenario, exits 0 and writes JSON, Markdown and SVG', { timeout: 420_000 }, async () => {
    const child = spawn(process.execPath, [MAIN, '--quick', '--out', out], { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    child.stdout.on('data', (d: Buffer) => (log += d.toString()));
    child.stderr.on('data', (d: Buffer) => (log += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    assert.equal(code, 0, `bench exited ${code}:\n${log.slice(-5000)}`);

    const jsons = fs.readdirSync(out).filter((f) => f.endsWith('.json'));
    assert.equal(jsons.length, 1, `expected one JSON report in ${out}, got ${jsons.join(', ')}`);
    const rep = JSON.parse(fs.readFileSync(path.join(out, jsons[0]!), 'utf8')) as {
      scenarios: Array<{ name: string; rows: Array<{ name: string; summary: { n: number } }>; errors: string[]; notes: string[] }>;
      failures: string[];
      cleanupProblems: string[];
    };
    assert.deepEqual(rep.scenarios.map((s) => s.name).sort(), [...SCENARIO_NAMES].sort());
    for (const s of rep.scenarios) {
      // gvisor, microvm and hibernate skip loudly (a "skipped:" note) on a host without runsc, QEMU and a guest
      // kernel, or CRIU 4.
      const skipped = ['gvisor', 'microvm', 'hibernate'].includes(s.name) && s.notes.some((n) => n.startsWith('skipped:'));
      assert.ok(s.rows.length > 0 || skipped, `scenario ${s.name} has no rows`);
      assert.deepEqual(s.errors, [], `scenario ${s.name} had errors`);
    }
    assert.ok(rep.scenarios.find((s) => s.name === 'ttfc')!.rows.some((r) => r.name === 'ttfc.cold'));
    assert.ok(rep.scenarios.find((s) => s.name === 'ttfc')!.rows.some((r) => r.name === 'ttfc.warm-pool' && r.summary.n > 0));
    assert.ok(rep.scenarios.find((s) => s.name === 'sustained')!.rows.some((r) => r.name.includes('from a warm pool') && r.summary.n > 0));
    assert.deepEqual(rep.failures, []);
    assert.deepEqual(rep.cleanupProblems, []);
    assert.ok(fs.existsSync(path.join(out, 'latest.md')), 'latest.md missing');
    assert.ok(fs.readFileSync(path.join(out, 'latest.svg'), 'utf8').startsWith('<svg'), 'latest.svg is not an SVG');
    // Nothing of the bench is left mounted.
    const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8');
    assert.doesNotMatch(mounts, /capsule-bench-/);
  });
});
