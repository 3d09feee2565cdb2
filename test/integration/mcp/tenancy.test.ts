/** MCP uses the same API keys as REST: a client without the sandbox owner's key cannot use it. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { api, type TestDaemon } from '../../helpers/daemon.js';
import { TRANSPORTS, connectClient, rawPost, startMcpDaemon } from './fixture.js';
import { modernRequest } from './wire.js';

let d: TestDaemon;
let alice: string;
let bob: string;

describe('mcp: API keys and owners', () => {
  before(async () => {
    d = await startMcpDaemon();
    alice = (await api(d.url, 'POST', '/v1/keys', { name: 'alice' })).json.key;
    bob = (await api(d.url, 'POST', '/v1/keys', { name: 'bob' })).json.key;
  });
  after(async () => {
    await d?.stop();
  });

  it('refuses /mcp without a key', async () => {
    const port = new URL(d.url).port;
    const r = await rawPost(
      `${d.url}/mcp`,
      { 'content-type': 'application/json', accept: 'application/json, text/event-stream', host: `127.0.0.1:${port}` },
      JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 't', version: '1' } } }),
    );
    assert.equal(r.status, 401);
  });

  for (const kind of TRANSPORTS) {
    it(`over ${kind}: bob cannot see or use alice's sandbox`, async () => {
      const a = await connectClient(kind, d, alice);
      const b = await connectClient(kind, d, bob);
      try {
        const made = await a.client.callTool('sandbox_create', { template: 'busybox' });
        assert.ok(!made.isError, JSON.stringify(made));
        const id = (made.structuredContent as { sandbox_id?: string; id?: string }).sandbox_id ?? (made.structuredContent as { id: string }).id;
        assert.match(id, /^sbx-/);
        const own = await a.client.callTool('run_command', { sandbox_id: id, command: 'echo mine' });
        assert.equal((own.structuredContent as { stdout: string }).stdout, 'mine\n');
        const theirs = await b.client.callTool('run_command', { sandbox_id: id, command: 'echo stolen' });
        assert.equal(theirs.isError, true);
        assert.doesNotMatch(JSON.stringify(theirs), /stolen/);
        const list = await b.client.callTool('sandbox_list', {});
        assert.doesNotMatch(JSON.stringify(list.structuredContent), new RegExp(id));
        const read = await b.client.callTool('read_file', { sandbox_id: id, path: '/etc/hostname' });
        assert.equal(read.isError, true);
        // The same for a stateless (2026-07-28) request with bob's key: no session, same owner check.
        const m = modernRequest(9, 'tools/call', { name: 'run_command', arguments: { sandbox_id: id, command: 'echo stolen' } });
        const port = new URL(d.url).port;
        const stateless = await rawPost(`${d.url}/mcp`, { 'content-type': 'application/json', accept: 'application/json, text/event-stream', host: `127.0.0.1:${port}`, authorization: `Bearer ${bob}`, ...m.headers }, m.body);
        assert.equal(stateless.status, 200, stateless.body);
        assert.equal(JSON.parse(stateless.body).result.isError, true);
        assert.match(stateless.body, /not_found/);
        assert.doesNotMatch(stateless.body, /"stdout":"stolen/);
        await a.client.callTool('sandbox_kill', { sandbox_id: id });
      } finally {
        await a.close();
        await b.close();
      }
    });
  }
});
