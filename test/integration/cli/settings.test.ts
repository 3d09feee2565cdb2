/**
 * `capsule serve` with a bad setting, run as a user runs it: it must stop before
 * doing anything, name the setting and its value, exit non-zero, and print no stack.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { CLI } from '../../helpers/daemon.js';

function serve(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.once('error', reject);
    // A daemon that accepted the setting would keep running: that is the failure this catches.
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('capsule serve with a bad setting', () => {
  it('CAPSULE_PORT=abc: exit 1, the setting and value named, no stack, nothing made', async () => {
    const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-settings-'));
    const dataDir = path.join(parent, 'data');
    try {
      const r = await serve(['--data-dir', dataDir], { CAPSULE_PORT: 'abc' });
      const show = `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
      assert.equal(r.code, 1, show);
      assert.match(r.stderr, /^capsule: invalid_argument: CAPSULE_PORT="abc" is not valid: must be a whole number from 0 to 65535/m, show);
      assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace');
      assert.doesNotMatch(r.stdout, /listening/, show);
      assert.equal(fs.existsSync(dataDir), false, 'refused before creating the data dir');
    } finally {
      fs.rmSync(parent, { recursive: true, force: true });
    }
  });

  it('--port abc: a usage error (exit 2) naming the flag', async () => {
    const r = await serve(['--port', 'abc', '--data-dir', path.join(os.tmpdir(), 'capsule-never-made')], {});
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /^capsule: invalid_argument: --port "abc" is not valid/m);
    assert.doesNotMatch(r.stderr, /^\s+at /m);
  });
});
