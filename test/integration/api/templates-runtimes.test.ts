/**
 * The acceptance path (debian template, python3 through the CLI) and
 * the runtime as a setting (the same API on runc).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { CLI, api, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';

const run = promisify(execFile);

describe('debian template through the CLI', () => {
  let d: TestDaemon;
  before(async () => {
    d = await startTestDaemon();
  });
  after(async () => {
    await d?.stop();
  });

  it('create --template debian, then exec python3 prints 42 and exits 0', { timeout: 10 * 60_000 }, async () => {
    const env = { ...process.env, CAPSULE_URL: d.url };
    const created = await run(process.execPath, [CLI, 'create', '--template', 'debian'], { env, timeout: 10 * 60_000 });
    const id = created.stdout.trim();
    assert.match(id, /^sbx-[a-z0-9]{12}$/);
    const out = await run(process.execPath, [CLI, 'exec', id, '--', 'python3', '-c', 'print(6*7)'], { env });
    assert.equal(out.stdout, '42\n');
    const templates = await api(d.url, 'GET', '/v1/templates');
    const debian = templates.json.templates.find((t: any) => t.name === 'debian');
    assert.equal(debian.status, 'ready');
    await run(process.execPath, [CLI, 'kill', id], { env });
  });
});

describe('runtime is a setting: runc', () => {
  let d: TestDaemon;
  before(async () => {
    d = await startTestDaemon({ args: ['--runtime', 'runc'] });
  });
  after(async () => {
    await d?.stop();
  });

  it('creates, runs commands, writes files and kills under runc', async () => {
    const sb = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    assert.equal(sb.status, 201, sb.text);
    const r = await api(d.url, 'POST', `/v1/sandboxes/${sb.json.id}/commands`, { cmd: 'echo runc-ok; cat /proc/self/status | grep -E "^(Seccomp|NoNewPrivs):"' });
    assert.match(r.json.stdout, /^runc-ok\n/);
    assert.match(r.json.stdout, /Seccomp:\s+2/);
    assert.match(r.json.stdout, /NoNewPrivs:\s+1/);
    const k = await api(d.url, 'DELETE', `/v1/sandboxes/${sb.json.id}`);
    assert.equal(k.json.state, 'killed');
  });
});
