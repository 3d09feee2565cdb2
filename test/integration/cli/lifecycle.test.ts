/**
 * `capsule pause|resume|stop|start` and the lifecycle options of `capsule
 * create`, as child processes against a real daemon and real sandboxes.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { CLI, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';

let d: TestDaemon;

function capsule(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CAPSULE_URL: d.url } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.once('error', reject);
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('cli lifecycle', () => {
  before(async () => {
    d = await startTestDaemon();
  });
  after(async () => {
    await d?.stop();
  });

  it('pause, resume, stop and start a sandbox; exec on a paused one fails naming the state', async () => {
    const c = await capsule(['create', '--template', 'busybox', '--on-timeout', 'stop', '--idle', '600', '--delete-after', '3600']);
    assert.equal(c.code, 0, c.stderr);
    const id = c.stdout.trim();
    const info = JSON.parse((await capsule(['info', id, '--json'])).stdout);
    assert.deepEqual(info.lifecycle, { onTimeout: 'stop', autoResume: false, idleMs: 600_000, deleteAfterMs: 3_600_000 });

    await capsule(['exec', id, '--', 'sh', '-c', 'echo kept > /root/f']);
    const p = await capsule(['pause', id]);
    assert.equal(p.code, 0, p.stderr);
    assert.match(p.stdout, new RegExp(`^${id} paused \\(deleted .* unless woken, \\d+ s of its timeout left\\)\\n$`));
    const refused = await capsule(['exec', id, '--', 'true']);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /^capsule: conflict: cannot run a command: sandbox \S+ is paused/);
    assert.match((await capsule(['info', id])).stdout, /state\s+paused[\s\S]*deleted\s[\s\S]*time left/);
    assert.match((await capsule(['list'])).stdout, new RegExp(`${id}\\s+busybox\\s+paused`), 'listed by default');

    const r = await capsule(['resume', id, '--timeout', '120']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^${id} running \\(expires .*, in (2m00s|1m5\\ds)\\)`), 'the lifetime asked with --timeout');
    const s = await capsule(['stop', id, '--json']);
    assert.equal(JSON.parse(s.stdout).state, 'stopped');
    const st = await capsule(['start', id]);
    assert.equal(st.code, 0, st.stderr);
    assert.equal((await capsule(['exec', id, '--', 'cat', '/root/f'])).stdout, 'kept\n');
    const wrong = await capsule(['resume', id]);
    assert.equal(wrong.code, 0, 'resuming a running sandbox does nothing');
    await capsule(['kill', id]);
  });

  it('refuses a bad --on-timeout as a usage error', async () => {
    const r = await capsule(['create', '--template', 'busybox', '--on-timeout', 'freeze']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--on-timeout must be one of kill, pause, stop, hibernate/);
  });
});
