/** `capsule files watch` and `capsule top` against a real daemon and a real sandbox. */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { CLI, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { Sandbox } from '../../../src/sdk/index.js';

describe('capsule files watch / capsule top', () => {
  let d: TestDaemon;
  let dataDir: string;
  let sbx: Sandbox;
  const env = () => ({ ...process.env, CAPSULE_URL: d.url, CAPSULE_API_KEY: d.adminKey ?? '' });

  before(async () => {
    dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir, env: { CAPSULE_METRICS_INTERVAL_MS: '300' } });
    sbx = await Sandbox.create({ apiUrl: d.url, template: 'busybox' });
  });
  after(async () => {
    await sbx?.kill().catch(() => {});
    await d?.stop();
    if (dataDir) await removeDataDir(dataDir);
  });

  it('files watch prints events until Ctrl-C', async () => {
    await sbx.commands.run('mkdir -p /w');
    const child = spawn(process.execPath, [CLI, 'files', 'watch', sbx.id, '/w', '--recursive'], { env: env() });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    const deadline = Date.now() + 10_000;
    while (!err.includes('watching') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await sbx.commands.run('mkdir /w/d');
    while (!out.includes('d/') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    // The new directory is watched once it was reported: a write in it is seen as such.
    await sbx.commands.run('echo hi > /w/d/f');
    while (!/^write\s+d\/f$/m.test(out) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    child.kill('SIGINT');
    const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    assert.match(out, /^create\s+d\/$/m);
    assert.match(out, /^create\s+d\/f$/m);
    assert.match(out, /^write\s+d\/f$/m);
    assert.equal(code, 0, err);
  });

  it('top --json lists the sandbox with its figures; --once prints a table', async () => {
    await new Promise((r) => setTimeout(r, 1000));
    const j = spawnSync(process.execPath, [CLI, 'top', '--json'], { env: env(), encoding: 'utf8' });
    assert.equal(j.status, 0, j.stderr);
    const rows = JSON.parse(j.stdout) as Array<{ id: string; metrics?: { memLimitBytes: number } }>;
    assert.ok(rows.find((r) => r.id === sbx.id)?.metrics?.memLimitBytes);
    const t = spawnSync(process.execPath, [CLI, 'top', '--once'], { env: env(), encoding: 'utf8' });
    assert.equal(t.status, 0, t.stderr);
    assert.match(t.stdout, /^ID\s+TEMPLATE\s+CPU\s+MEMORY\s+DISK\s+PIDS/m);
    assert.match(t.stdout, new RegExp(`^${sbx.id}\\s+busybox\\s+[\\d.]+% / 100%`, 'm'));
  });
});
