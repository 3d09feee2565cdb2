/**
 * The sandbox log through its native views (REST, SDK, CLI) against a real daemon and a real busybox
 * sandbox: lifecycle events (created, running, paused, resumed, timeout, killed), commands started and
 * ended with exit codes, an OOM kill, the level filter and cursor, after the sandbox ended, and tenancy.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { Sandbox } from '../../../src/sdk/index.js';
import { api, CLI, removeDataDir, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';

const skip = process.getuid?.() !== 0 ? 'needs root (real crun sandboxes)' : false;

let d: TestDaemon;

describe('sandbox logs (native API, SDK, CLI)', { skip, timeout: 3 * 60_000 }, () => {
  before(async () => {
    d = await startTestDaemon();
  });
  after(async () => {
    await d?.stop();
    if (d) await removeDataDir(d.dataDir);
  });

  it('lists lifecycle and command events, with exit codes and an OOM kill, through REST, the SDK and the CLI', async () => {
    const c = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', resources: { memoryMb: 64 } });
    assert.equal(c.status, 201, c.text);
    const id = c.json.id as string;
    try {
      const sh = async (cmd: string) => (await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd })).json;
      assert.equal((await sh('echo hi')).exitCode, 0);
      assert.equal((await sh('exit 3')).exitCode, 3);
      const oom = await sh('head -c 300000000 /dev/zero | tail -c 250000000 > /dev/null');
      assert.equal(oom.oomKilled, true, JSON.stringify(oom));
      assert.equal((await api(d.url, 'POST', `/v1/sandboxes/${id}/timeout`, { timeoutMs: 120_000 })).status < 300, true);
      assert.equal((await api(d.url, 'POST', `/v1/sandboxes/${id}/pause`)).status, 200);
      assert.equal((await api(d.url, 'POST', `/v1/sandboxes/${id}/resume`)).status, 200);

      const r = await api(d.url, 'GET', `/v1/sandboxes/${id}/logs?level=info`);
      assert.equal(r.status, 200, r.text);
      const entries = r.json.entries as Array<{ seq: number; level: string; event: string; message: string; fields: Record<string, string> }>;
      const events = entries.map((e) => e.event);
      const order = ['state.creating', 'state.running', 'command.start', 'command.end', 'state.paused', 'state.running'];
      let at = -1;
      for (const ev of order) {
        const next = events.indexOf(ev, at + 1);
        assert.ok(next > at, `${id}: ${ev} after index ${at} in ${events.join(',')}`);
        at = next;
      }
      assert.ok(!events.includes('timeout') && !events.includes('state.pausing'), 'level=info leaves debug entries out');
      const ends = entries.filter((e) => e.event === 'command.end');
      assert.deepEqual(ends.map((e) => e.fields.exitCode), ['0', '3', '137']);
      assert.equal(ends[2]!.level, 'warn');
      assert.equal(ends[2]!.fields.oomKilled, 'true');
      assert.match(ends[2]!.message, /out of memory/);
      assert.match(entries.find((e) => e.event === 'command.start')!.message, /echo hi/);
      assert.equal(entries.at(-1)!.message, 'resumed');
      assert.equal(r.json.cursor, entries.at(-1)!.seq);

      const debug = (await api(d.url, 'GET', `/v1/sandboxes/${id}/logs`)).json.entries as Array<{ event: string }>;
      assert.ok(debug.some((e) => e.event === 'timeout') && debug.some((e) => e.event === 'state.pausing'));
      const warn = (await api(d.url, 'GET', `/v1/sandboxes/${id}/logs?level=warn`)).json.entries as Array<{ event: string }>;
      assert.deepEqual(warn.map((e) => e.event), ['command.end']);
      assert.equal((await api(d.url, 'GET', `/v1/sandboxes/${id}/logs?level=loud`)).status, 400);
      assert.equal((await api(d.url, 'GET', `/v1/sandboxes/${id}/logs?limit=100000`)).status, 400);

      // The SDK: the same entries, and a cursor that gives only what came after it.
      const sbx = await Sandbox.connect(id, { apiUrl: d.url, apiKey: d.adminKey ?? '' });
      const page = await sbx.logs({ level: 'info' });
      assert.deepEqual(page.entries.map((e) => e.seq), entries.map((e) => e.seq));
      await sbx.commands.run('echo later');
      const after = await sbx.logs({ since: page.cursor, level: 'info' });
      assert.deepEqual(after.entries.map((e) => e.event), ['command.start', 'command.end']);

      // The CLI.
      const env = { ...process.env, CAPSULE_URL: d.url, CAPSULE_API_KEY: d.adminKey ?? '' };
      const out = spawnSync(process.execPath, [CLI, 'logs', id], { env, encoding: 'utf8' });
      assert.equal(out.status, 0, out.stderr);
      assert.match(out.stdout, /INFO\s+running/);
      assert.match(out.stdout, /WARN\s+pid \d+ killed by SIGKILL: out of memory/);
      assert.match(out.stdout, /exited with code 3/);

      // Another owner sees nothing: 404, as for the sandbox itself.
      const other = await api(d.url, 'POST', '/v1/keys', { name: 'other', owner: 'someone-else' });
      assert.equal(other.status, 201, other.text);
      const theirs = await api(d.url, 'GET', `/v1/sandboxes/${id}/logs`, undefined, { authorization: `Bearer ${other.json.key}` });
      assert.equal(theirs.status, 404, theirs.text);
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
    }
    // After it ended, its log stays, with how it ended.
    const ended = (await api(d.url, 'GET', `/v1/sandboxes/${id}/logs`)).json.entries as Array<{ event: string }>;
    assert.equal(ended.at(-1)!.event, 'state.killed');
  });
});
