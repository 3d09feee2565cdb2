/**
 * Defect 5 of issue 9: a data dir under a directory the sandboxes' mapped root cannot
 * search (`--data-dir ~/capsule-data` as root, home 0700) made every create fail deep
 * in crun ("make '.../rootfs' private: Permission denied"). Now the daemon refuses to
 * start and says what to change, `capsule doctor --data-dir` reports it, and the change
 * it names is enough for sandboxes to work.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CLI, api, removeDataDir, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';

function capsule(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CAPSULE_POOL: '', CAPSULE_LOG_LEVEL: 'warn' },
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.once('error', reject);
    // A daemon that starts anyway keeps running: kill it, the assertions below then fail.
    const timer = setTimeout(() => child.kill('SIGTERM'), 60_000);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('a data dir sandbox root cannot reach', () => {
  let locked: string;
  let dataDir: string;
  let d: TestDaemon | undefined;

  before(() => {
    // Stands for /root (0700) on a root-run host: owned by root, searchable by nobody else.
    locked = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-home-'));
    fs.chmodSync(locked, 0o700);
    dataDir = path.join(locked, 'capsule-data');
  });
  after(async () => {
    await d?.stop({ removeDataDir: false });
    await removeDataDir(dataDir);
    fs.rmSync(locked, { recursive: true, force: true });
  });

  it('capsule serve refuses to start and says what to change', async () => {
    const r = await capsule(['serve', '--host', '127.0.0.1', '--port', '0', '--data-dir', dataDir]);
    const show = `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
    assert.doesNotMatch(r.stdout, /listening/, show);
    assert.equal(r.code, 1, show);
    assert.match(r.stderr, new RegExp(`data dir: sandbox root \\(host uid/gid 100000\\) cannot reach ${dataDir}`), show);
    assert.match(r.stderr, new RegExp(`chmod o\\+x ${locked}\\b`), show);
    assert.match(r.stderr, /--data-dir \/var\/lib\/capsule/, show);
    assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace');
  });

  it('capsule doctor --data-dir reports it', async () => {
    const r = await capsule(['doctor', '--data-dir', dataDir, '--json']);
    assert.equal(r.code, 1, r.stderr);
    const check = (JSON.parse(r.stdout) as Array<{ name: string; ok: boolean; message: string; fix?: string }>).find((c) => c.name === 'data dir');
    assert.ok(check, r.stdout);
    assert.equal(check.ok, false);
    assert.match(check.fix ?? '', new RegExp(`chmod o\\+x ${locked}\\b`));
  });

  it('after the change it names, the daemon starts and sandboxes work', async () => {
    fs.chmodSync(locked, 0o701);
    const doc = await capsule(['doctor', '--data-dir', dataDir, '--json']);
    assert.equal((JSON.parse(doc.stdout) as Array<{ name: string; ok: boolean }>).find((c) => c.name === 'data dir')?.ok, true, doc.stdout);
    d = await startTestDaemon({ dataDir });
    const sb = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    assert.equal(sb.status, 201, sb.text);
    const r = await api(d.url, 'POST', `/v1/sandboxes/${sb.json.id}/commands`, { cmd: 'echo reached' });
    assert.equal(r.json.stdout, 'reached\n', r.text);
  });
});
