/**
 * sandbox_pause / resume / stop / start and sandbox_create's lifecycle, over
 * every MCP transport (stdio to `capsule mcp`, Streamable HTTP to `/mcp`, and
 * the stateless 2026 variants of both), with real busybox sandboxes.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { api, removeDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { TRANSPORTS, connectClient, startMcpDaemon, type Connected } from './fixture.js';

let d: TestDaemon;

const text = (r: CallToolResult): string => r.content.map((c) => (c.type === 'text' ? c.text : '')).join('');

before(async () => {
  d = await startMcpDaemon();
});
after(async () => {
  await d?.stop();
  if (d) await removeDataDir(d.dataDir);
});

for (const kind of TRANSPORTS) {
  describe(`mcp lifecycle over ${kind}`, () => {
    let c: Connected;
    let id: string | undefined;
    const call = async (name: string, args: Record<string, unknown>) => {
      const r = await c.client.callTool(name, args);
      return { r, s: r.structuredContent as Record<string, any> };
    };
    before(async () => {
      c = await connectClient(kind, d);
    });
    after(async () => {
      if (id) await api(d.url, 'DELETE', `/v1/sandboxes/${id}`).catch(() => undefined);
      await c?.close();
    });

    it('pauses, resumes, stops and starts; a paused sandbox without auto_resume refuses commands', async () => {
      const created = await call('sandbox_create', { template: 'busybox', lifecycle: { on_timeout: 'pause', delete_after_ms: 600_000 } });
      assert.notEqual(created.r.isError, true, text(created.r));
      id = created.s.sandbox_id as string;
      const info = await api(d.url, 'GET', `/v1/sandboxes/${id}`);
      assert.deepEqual(info.json.lifecycle, { onTimeout: 'pause', autoResume: false, deleteAfterMs: 600_000 }, 'snake_case in, the same policy out');
      await call('write_file', { sandbox_id: id, path: '/root/f', content: 'kept\n' });

      const p = await call('sandbox_pause', { sandbox_id: id });
      assert.equal(p.s.state, 'paused', text(p.r));
      assert.equal(typeof p.s.timeout_remaining_ms, 'number');
      const refused = await call('run_command', { sandbox_id: id, command: 'true' });
      assert.equal(refused.r.isError, true);
      assert.match(text(refused.r), /^conflict: cannot run a command: sandbox \S+ is paused/);
      assert.equal((await call('sandbox_resume', { sandbox_id: id, timeout_ms: 90_000 })).s.state, 'running');
      assert.equal((await call('sandbox_stop', { sandbox_id: id })).s.state, 'stopped');
      assert.equal((await call('sandbox_start', { sandbox_id: id })).s.state, 'running');
      const r = await call('read_file', { sandbox_id: id, path: '/root/f' });
      assert.equal(r.s.content, 'kept\n');
    });

    it('auto_resume: a command to a stopped sandbox starts it and answers', async () => {
      const created = await call('sandbox_create', { template: 'busybox', lifecycle: { auto_resume: true } });
      const auto = created.s.sandbox_id as string;
      try {
        await call('sandbox_stop', { sandbox_id: auto });
        const r = await call('run_command', { sandbox_id: auto, command: 'echo up' });
        assert.notEqual(r.r.isError, true, text(r.r));
        assert.equal(r.s.stdout, 'up\n');
      } finally {
        await api(d.url, 'DELETE', `/v1/sandboxes/${auto}`);
      }
    });
  });
}
