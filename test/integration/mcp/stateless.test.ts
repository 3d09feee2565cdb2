/**
 * The 2026-07-28 (stateless) era: requests without any initialize, each
 * carrying its version and capabilities in `_meta` (and, over HTTP, in the
 * MCP-Protocol-Version / Mcp-Method / Mcp-Name headers), over Streamable HTTP
 * and over stdio, against a real daemon with busybox sandboxes.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { CLI, api, authHeaders, removeDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { startMcpDaemon } from './fixture.js';
import { TOOLS } from '../../../src/mcp/tools.js';
import { MODERN, envelope, modernRequest, openSse, type SseEvent } from './wire.js';

let d: TestDaemon;
const cleanup: string[] = [];

before(async () => {
  d = await startMcpDaemon();
});
after(async () => {
  for (const id of cleanup) await api(d.url, 'DELETE', `/v1/sandboxes/${id}`).catch(() => undefined);
  await d?.stop();
  if (d) await removeDataDir(d.dataDir);
});

type Rpc = { id?: number; result?: Record<string, unknown>; error?: { code: number; message: string }; method?: string; params?: Record<string, unknown> };

async function post(id: number, method: string, params: Record<string, unknown> = {}, meta: Record<string, unknown> = {}): Promise<{ status: number; events: SseEvent[]; sse: boolean }> {
  const r = modernRequest(id, method, params, meta);
  const s = await openSse(`${d.url}/mcp`, 'POST', { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...authHeaders(d.url), ...r.headers }, r.body);
  const events: SseEvent[] = [];
  for (let e = await s.next(); e; e = await s.next()) events.push(e);
  return { status: s.status, events, sse: (s.headers['content-type'] ?? '').includes('text/event-stream') };
}

function response(events: SseEvent[], id: number): Rpc {
  const msgs = events.filter((e) => e.data).map((e) => JSON.parse(e.data) as Rpc);
  const found = msgs.filter((m) => m.id === id && !m.method);
  assert.equal(found.length, 1, `one response for ${id}: ${JSON.stringify(msgs).slice(0, 2000)}`);
  return found[0]!;
}

describe('mcp 2026-07-28 over http (no initialize, no session)', () => {
  it('lists the tools', async () => {
    const r = await post(1, 'tools/list');
    assert.equal(r.status, 200);
    const res = response(r.events, 1);
    const tools = (res.result!.tools as Array<{ name: string }>).map((t) => t.name);
    assert.ok(tools.includes('run_command') && tools.includes('sandbox_create') && tools.length === TOOLS.length, tools.join(','));
    assert.equal(res.result!.resultType, 'complete');
  });

  it('calls run_command in a sandbox, and one it creates itself when sandbox_id is omitted', async () => {
    const made = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    const id = made.json.id as string;
    cleanup.push(id);
    const r = await post(2, 'tools/call', { name: 'run_command', arguments: { sandbox_id: id, command: 'echo $((6*7))' } });
    const res = response(r.events, 2).result as { structuredContent: { exit_code: number; stdout: string }; isError?: boolean };
    assert.notEqual(res.isError, true, JSON.stringify(res));
    assert.deepEqual([res.structuredContent.exit_code, res.structuredContent.stdout], [0, '42\n']);

    // No session, so no default sandbox to fall back on: the call makes one and says which.
    const fresh = await post(3, 'tools/call', { name: 'run_command', arguments: { command: 'echo made' } });
    const out = response(fresh.events, 3).result as { structuredContent: { sandbox_id: string; sandbox_created?: boolean; stdout: string } };
    cleanup.push(out.structuredContent.sandbox_id);
    assert.equal(out.structuredContent.sandbox_created, true);
    assert.equal(out.structuredContent.stdout, 'made\n');
  });

  it('streams progress notifications, then the result, when the request carries a progress token', async () => {
    const made = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    cleanup.push(made.json.id as string);
    const r = await post(4, 'tools/call', { name: 'run_command', arguments: { sandbox_id: made.json.id, command: 'for i in 1 2 3; do echo p$i; sleep 0.2; done' } }, { progressToken: 'tok' });
    assert.ok(r.sse, 'answered as SSE');
    const progress = r.events.map((e) => JSON.parse(e.data) as Rpc).filter((m) => m.method === 'notifications/progress');
    assert.ok(progress.length >= 3, JSON.stringify(progress));
    assert.equal(progress[0]!.params!.progressToken, 'tok');
    assert.equal((response(r.events, 4).result as { structuredContent: { stdout: string } }).structuredContent.stdout, 'p1\np2\np3\n');
  });

  it('kills the command when the client hangs up (there is no cancel notification without a session)', async () => {
    const made = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    const id = made.json.id as string;
    cleanup.push(id);
    const marker = `sleep-modern-${Date.now() % 100000}`;
    const r = modernRequest(8, 'tools/call', { name: 'run_command', arguments: { sandbox_id: id, command: `sleep 30 # ${marker}`, timeout_ms: 60_000 } });
    // Without a progress token nothing is sent before the result, so the client is cut before any response header.
    const hangUp = new AbortController();
    const pending = openSse(`${d.url}/mcp`, 'POST', { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...authHeaders(d.url), ...r.headers }, r.body, hangUp.signal);
    pending.catch(() => undefined);
    type Proc = { cmd: string[]; running: boolean };
    const find = async () => ((await api(d.url, 'GET', `/v1/sandboxes/${id}/commands`)).json.processes as Proc[]).find((p) => p.cmd.join(' ').includes(marker));
    let proc: Proc | undefined;
    for (let i = 0; i < 50 && !proc?.running; i++) {
      proc = await find();
      if (!proc?.running) await new Promise((res) => setTimeout(res, 100));
    }
    assert.ok(proc?.running, 'the command started');
    hangUp.abort();
    for (let i = 0; i < 50 && proc?.running; i++) {
      await new Promise((res) => setTimeout(res, 100));
      proc = await find();
    }
    assert.equal(proc?.running, false, 'the command was killed');
  });

  it('refuses a request whose headers disagree with its body, and a version it does not serve', async () => {
    const r = modernRequest(5, 'tools/list');
    const bad = await openSse(`${d.url}/mcp`, 'POST', { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...authHeaders(d.url), ...r.headers, 'mcp-method': 'tools/call' }, r.body);
    assert.equal(bad.status, 400);
    assert.match((await bad.next())!.data, /-32020/);
    const future = modernRequest(6, 'tools/list', {}, { 'io.modelcontextprotocol/protocolVersion': '2099-01-01' });
    const s = await openSse(`${d.url}/mcp`, 'POST', { 'content-type': 'application/json', accept: 'application/json', ...authHeaders(d.url), ...future.headers, 'mcp-protocol-version': '2099-01-01' }, future.body);
    const err = JSON.parse((await s.next())!.data) as { error: { code: number; data?: { supported?: string[] } } };
    // -32022: unsupported protocol version; the error names the versions this endpoint serves.
    assert.equal(err.error.code, -32022, JSON.stringify(err));
    assert.match(JSON.stringify(err.error.data), /2026-07-28/);
  });

  it('answers an initialize that asks for 2026-07-28 with a 2025-11-25 session (that era has no handshake)', async () => {
    const body = JSON.stringify({ jsonrpc: '2.0', id: 10, method: 'initialize', params: { protocolVersion: MODERN, capabilities: {}, clientInfo: { name: 't', version: '1' } } });
    const s = await openSse(`${d.url}/mcp`, 'POST', { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...authHeaders(d.url) }, body);
    assert.equal(s.status, 200);
    assert.ok(s.headers['mcp-session-id'], 'a session was opened');
    assert.equal((JSON.parse((await s.next())!.data) as { result: { protocolVersion: string } }).result.protocolVersion, '2025-11-25');
  });

  it('still needs the API key', async () => {
    const r = modernRequest(7, 'tools/list');
    const port = new URL(d.url).port;
    const s = await openSse(`${d.url}/mcp`, 'POST', { 'content-type': 'application/json', accept: 'application/json', host: `127.0.0.1:${port}`, ...r.headers }, r.body);
    assert.equal(s.status, 401);
    s.drop();
  });
});

describe('mcp 2026-07-28 over stdio (no initialize)', () => {
  let child: ChildProcessWithoutNullStreams;
  let stderr = '';
  const pending = new Map<number, (m: Rpc) => void>();

  before(() => {
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v;
    env.CAPSULE_URL = d.url;
    if (d.adminKey) env.CAPSULE_API_KEY = d.adminKey;
    child = spawn(process.execPath, [CLI, 'mcp', '--template', 'busybox'], { env });
    child.stderr.on('data', (b: Buffer) => (stderr = (stderr + b.toString()).slice(-10_000)));
    let buf = '';
    child.stdout.on('data', (b: Buffer) => {
      buf += b.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const m = JSON.parse(buf.slice(0, i)) as Rpc;
        buf = buf.slice(i + 1);
        if (m.id !== undefined) pending.get(m.id)?.(m);
      }
    });
  });
  after(() => {
    child.stdin.end();
  });

  const rpc = (id: number, method: string, params: Record<string, unknown> = {}) =>
    new Promise<Rpc>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no answer to ${method}; stderr: ${stderr}`)), 15_000);
      pending.set(id, (m) => {
        clearTimeout(t);
        resolve(m);
      });
      child.stdin.write(`${JSON.stringify({ jsonrpc: '2.0', id, method, params: { ...params, _meta: envelope() } })}\n`);
    });

  it('answers tools/list and tools/call without a handshake', async () => {
    const list = await rpc(1, 'tools/list');
    assert.equal((list.result!.tools as unknown[]).length, TOOLS.length, JSON.stringify(list));
    const made = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    cleanup.push(made.json.id as string);
    const call = await rpc(2, 'tools/call', { name: 'run_command', arguments: { sandbox_id: made.json.id, command: 'echo $((6*7))' } });
    assert.equal((call.result as { structuredContent: { stdout: string } }).structuredContent.stdout, '42\n');
    const discover = await rpc(3, 'server/discover');
    assert.deepEqual(discover.result!.supportedVersions, [MODERN]);
  });
});
