/**
 * The MCP server end to end: the same scenarios over stdio (`capsule mcp`
 * against a test daemon) and over Streamable HTTP (`/mcp` of that daemon),
 * driven by the MCP SDK's own Client. Real daemon, real busybox sandboxes.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { api, authHeaders, removeDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { INIT_BODY, TRANSPORTS, connectClient, isStateless, rawPost, startMcpDaemon, type Connected } from './fixture.js';

let d: TestDaemon;

const EXPECTED_TOOLS = [
  'list_files',
  'make_dir',
  'read_file',
  'remove_file',
  'run_code',
  'run_command',
  'sandbox_create',
  'sandbox_fork',
  'sandbox_kill',
  'sandbox_list',
  'sandbox_logs',
  'sandbox_network_log',
  'sandbox_pause',
  'sandbox_port_url',
  'sandbox_resume',
  'sandbox_set_network',
  'sandbox_set_timeout',
  'sandbox_snapshot',
  'sandbox_start',
  'sandbox_stop',
  'snapshot_delete',
  'snapshot_list',
  'write_file',
];

function text(r: CallToolResult): string {
  return r.content.map((c) => (c.type === 'text' ? c.text : '')).join('');
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

before(async () => {
  d = await startMcpDaemon();
});
after(async () => {
  await d?.stop();
  if (d) await removeDataDir(d.dataDir);
});

for (const kind of TRANSPORTS) {
  describe(`mcp over ${kind}`, () => {
    let c: Connected;
    let sandboxId: string;
    const call = (name: string, args: Record<string, unknown>) => c.client.callTool(name, args);

    before(async () => {
      c = await connectClient(kind, d);
    });
    after(async () => {
      if (sandboxId) await api(d.url, 'DELETE', `/v1/sandboxes/${sandboxId}`).catch(() => undefined);
      await c?.close();
    });

    it('lists the tools with schemas, output schemas and annotations', async () => {
      const { tools } = await c.client.listTools();
      assert.deepEqual(tools.map((t) => t.name).sort(), EXPECTED_TOOLS);
      for (const t of tools) {
        assert.equal(t.inputSchema.type, 'object', t.name);
        assert.equal(t.outputSchema?.type, 'object', `${t.name} has an output schema`);
        assert.equal(t.annotations?.openWorldHint, false, t.name);
        assert.equal(typeof t.annotations?.readOnlyHint, 'boolean', t.name);
        assert.ok(t.description && t.description.length > 20, t.name);
      }
      const run = tools.find((t) => t.name === 'run_command')!;
      const props = run.inputSchema.properties as Record<string, { description?: string }>;
      assert.match(props.command?.description ?? '', /sh -c/);
      assert.deepEqual(run.inputSchema.required, ['command']);
      assert.equal(tools.find((t) => t.name === 'sandbox_list')!.annotations?.readOnlyHint, true);
      assert.equal(tools.find((t) => t.name === 'sandbox_kill')!.annotations?.destructiveHint, true);
    });

    it('creates a sandbox and runs a command; a non-zero exit is a result, not an error', async () => {
      const created = await call('sandbox_create', { template: 'busybox', metadata: { suite: `mcp-${kind}` } });
      assert.notEqual(created.isError, true, text(created));
      sandboxId = (created.structuredContent as { sandbox_id: string }).sandbox_id;
      assert.match(sandboxId, /^sbx-[a-z0-9]{12}$/);

      const r = await call('run_command', { sandbox_id: sandboxId, command: 'echo $((6*7))' });
      assert.notEqual(r.isError, true, text(r));
      assert.equal((r.structuredContent as { exit_code: number }).exit_code, 0);
      assert.equal((r.structuredContent as { stdout: string }).stdout, '42\n');

      const bad = await call('run_command', { sandbox_id: sandboxId, command: 'echo oops >&2; exit 3' });
      assert.notEqual(bad.isError, true);
      assert.equal((bad.structuredContent as { exit_code: number }).exit_code, 3);
      assert.equal((bad.structuredContent as { stderr: string }).stderr, 'oops\n');

      const list = await call('sandbox_list', {});
      const ids = (list.structuredContent as { sandboxes: Array<{ sandbox_id: string }> }).sandboxes.map((s) => s.sandbox_id);
      assert.ok(ids.includes(sandboxId));
    });

    it('sets the network, reads the egress ledger and a port URL (no traffic leaves: nothing is dialled)', async () => {
      const created = await call('sandbox_create', { template: 'busybox', network: { egress: { allow: ['allowed.test'] } } });
      assert.notEqual(created.isError, true, text(created));
      const id = (created.structuredContent as { sandbox_id: string }).sandbox_id;
      try {
        const set = await call('sandbox_set_network', { sandbox_id: id, egress: 'none', public_ports: [8000] });
        assert.notEqual(set.isError, true, text(set));
        assert.deepEqual(set.structuredContent, { sandbox_id: id, egress: 'none', public_ports: [8000], gateway: true, resolver: '198.18.0.53' });
        const bad = await call('sandbox_set_network', { sandbox_id: id, egress: { allow: ['not a rule'] } });
        assert.equal(bad.isError, true);
        const events = await call('sandbox_logs', { sandbox_id: id, level: 'info' });
        assert.notEqual(events.isError, true, text(events));
        const entries = (events.structuredContent as { entries: Array<{ event: string; fields: Record<string, string> }> }).entries;
        assert.deepEqual(entries.map((e) => e.event).slice(0, 2), ['state.creating', 'state.running'], text(events));
        assert.match(text(events), /running/);
        const log = await call('sandbox_network_log', { sandbox_id: id });
        assert.notEqual(log.isError, true, text(log));
        assert.deepEqual((log.structuredContent as { entries: unknown[] }).entries, []);
        const port = await call('sandbox_port_url', { sandbox_id: id, port: 8000 });
        assert.notEqual(port.isError, true, text(port));
        const p = port.structuredContent as { url: string; public: boolean; signed_url: string; token: string };
        assert.match(p.url, new RegExp(`^http://8000-${id}\\.localhost:\\d+/$`));
        assert.equal(p.public, true);
        assert.ok(p.signed_url.startsWith(p.url) && p.token.length > 20);
      } finally {
        await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
      }
    });

    it('writes then reads a file, also as a resource', async () => {
      const w = await call('write_file', { sandbox_id: sandboxId, path: '/tmp/mcp/hello.txt', content: `hi from ${kind}\n`, metadata: { Via: 'mcp' } });
      assert.notEqual(w.isError, true, text(w));
      assert.equal((w.structuredContent as { size: number }).size, `hi from ${kind}\n`.length);
      assert.deepEqual((w.structuredContent as { metadata?: unknown }).metadata, { via: 'mcp' });
      const r = await call('read_file', { sandbox_id: sandboxId, path: '/tmp/mcp/hello.txt' });
      assert.deepEqual(
        { content: (r.structuredContent as { content: string }).content, encoding: (r.structuredContent as { encoding: string }).encoding },
        { content: `hi from ${kind}\n`, encoding: 'utf8' },
      );
      const ls = await call('list_files', { sandbox_id: sandboxId, path: '/tmp/mcp' });
      assert.deepEqual((ls.structuredContent as { entries: Array<{ name: string }> }).entries.map((e) => e.name), ['hello.txt']);
      assert.deepEqual((ls.structuredContent as { entries: Array<{ metadata?: unknown }> }).entries[0]!.metadata, { via: 'mcp' });

      const res = await c.client.readResource(`capsule://sandboxes/${sandboxId}/files/tmp/mcp/hello.txt`);
      assert.equal((res.contents[0] as { text?: string }).text, `hi from ${kind}\n`);
      const templates = await c.client.listResourceTemplates();
      assert.ok(templates.resourceTemplates.some((t) => t.uriTemplate === 'capsule://sandboxes/{id}/files/{+path}'));
      const roots = await c.client.listResources();
      assert.ok(roots.resources.some((x) => x.uri === `capsule://sandboxes/${sandboxId}/files/`));
      await assert.rejects(c.client.readResource(`capsule://sandboxes/${sandboxId}/files/no/such/file`), (err: Error & { code?: number }) => {
        assert.equal(err.code, -32602, err.message);
        assert.match(err.message, /not_found/);
        return true;
      });
      // The root URIs resources/list hands out are readable too.
      const root = await c.client.readResource(`capsule://sandboxes/${sandboxId}/files/`);
      assert.match((root.contents[0] as { text?: string }).text ?? '', /^tmp\/$/m);

      const rm = await call('remove_file', { sandbox_id: sandboxId, path: '/tmp/mcp', recursive: true });
      assert.notEqual(rm.isError, true, text(rm));
      const gone = await call('read_file', { sandbox_id: sandboxId, path: '/tmp/mcp/hello.txt' });
      assert.equal(gone.isError, true);
      assert.match(text(gone), /not_found/);
    });

    it('snapshots a sandbox, starts another from it, and deletes it once nothing uses it', async () => {
      const w = await call('write_file', { sandbox_id: sandboxId, path: '/snap/kept.txt', content: kind });
      assert.notEqual(w.isError, true, text(w));
      const name = `mcp-${kind}`;
      const snap = await call('sandbox_snapshot', { sandbox_id: sandboxId, name, metadata: { via: 'mcp' } });
      assert.notEqual(snap.isError, true, text(snap));
      const s = snap.structuredContent as { snapshot_id: string; name: string; sandbox_id: string; template: string; size_bytes: number; used_by: string[] };
      assert.match(s.snapshot_id, /^snap-[a-z0-9]{12}$/);
      assert.deepEqual([s.name, s.sandbox_id, s.template, s.used_by], [name, sandboxId, 'busybox', []]);
      const fork = await call('sandbox_create', { snapshot: name });
      assert.notEqual(fork.isError, true, text(fork));
      const forkId = (fork.structuredContent as { sandbox_id: string; template: string }).sandbox_id;
      assert.equal((fork.structuredContent as { template: string }).template, 'busybox');
      const r = await call('read_file', { sandbox_id: forkId, path: '/snap/kept.txt' });
      assert.equal((r.structuredContent as { content: string }).content, kind);
      const list = await call('snapshot_list', { sandbox_id: sandboxId });
      assert.deepEqual((list.structuredContent as { snapshots: Array<{ used_by: string[] }> }).snapshots.map((x) => x.used_by), [[forkId]]);
      const busy = await call('snapshot_delete', { snapshot: name });
      assert.equal(busy.isError, true);
      assert.match(text(busy), /conflict: snapshot .* is in use by sandbox/);
      await call('sandbox_kill', { sandbox_id: forkId });
      const del = await call('snapshot_delete', { snapshot: name });
      assert.notEqual(del.isError, true, text(del));
    });

    it('reports real failures with isError: missing sandbox, missing interpreter', async () => {
      const r = await call('run_command', { sandbox_id: 'sbx-000000000000', command: 'true' });
      assert.equal(r.isError, true);
      assert.match(text(r), /not_found: sandbox sbx-000000000000 not found/);
      const py = await call('run_code', { sandbox_id: sandboxId, language: 'python', code: 'print(1)' });
      assert.equal(py.isError, true);
      assert.match(text(py), /unsupported: python3 is not installed in this sandbox.*python template/);
    });

    it('creates a sandbox when sandbox_id is omitted; with a session it becomes the default', async () => {
      // A fresh session has no default sandbox (this one's default is the sandbox created above).
      const fresh = await connectClient(kind, d);
      const call = (name: string, args: Record<string, unknown>) => fresh.client.callTool(name, args);
      const first = await call('run_command', { command: 'echo first > /tmp/mark' });
      assert.notEqual(first.isError, true, text(first));
      const s1 = first.structuredContent as { sandbox_id: string; sandbox_created?: boolean };
      assert.equal(s1.sandbox_created, true);
      assert.match(text(first), new RegExp(`Created sandbox ${s1.sandbox_id}`));
      const made = [s1.sandbox_id];
      try {
        if (isStateless(kind)) {
          // No session, no default: the next call without sandbox_id gets a sandbox of its own.
          const second = await call('run_command', { command: 'cat /tmp/mark 2>/dev/null || echo none' });
          const s2 = second.structuredContent as { sandbox_id: string; sandbox_created?: boolean; stdout: string };
          made.push(s2.sandbox_id);
          assert.equal(s2.sandbox_created, true);
          assert.notEqual(s2.sandbox_id, s1.sandbox_id);
          assert.equal(s2.stdout, 'none\n');
        } else {
          const second = await call('read_file', { path: '/tmp/mark' });
          const s2 = second.structuredContent as { sandbox_id: string; sandbox_created?: boolean; content: string };
          assert.equal(s2.sandbox_id, s1.sandbox_id);
          assert.equal(s2.sandbox_created, undefined);
          assert.equal(s2.content, 'first\n');
        }
        const info = await api(d.url, 'GET', `/v1/sandboxes/${s1.sandbox_id}`);
        assert.equal(info.json.template, 'busybox');
      } finally {
        for (const id of made) {
          const k = await call('sandbox_kill', { sandbox_id: id });
          assert.equal((k.structuredContent as { state: string }).state, 'killed');
        }
        await fresh.close();
      }
    });

    it('sends progress notifications while a command prints slowly', async () => {
      const seen: Array<{ progress: number; message?: string | undefined; at: number }> = [];
      const started = Date.now();
      const r = await c.client.callTool(
        'run_command',
        { sandbox_id: sandboxId, command: 'for i in 1 2 3; do echo line$i; sleep 0.4; done' },
        { onprogress: (p) => seen.push({ progress: p.progress, message: p.message, at: Date.now() - started }) },
      );
      const took = Date.now() - started;
      assert.notEqual(r.isError, true, text(r));
      assert.equal((r.structuredContent as { stdout: string }).stdout, 'line1\nline2\nline3\n');
      assert.ok(seen.length >= 3, `expected 3 progress notifications, got ${JSON.stringify(seen)}`);
      assert.match(seen[0]!.message ?? '', /line1/);
      // The first one came while the command was still running, not with the result.
      assert.ok(seen[0]!.at < took - 500, `first progress at ${seen[0]!.at} ms, result at ${took} ms`);
      assert.deepEqual(seen.map((s) => s.progress), [...seen.keys()].map((i) => i + 1));
    });

    it('progress never splits a character (multi-byte output cut across frames)', async () => {
      const messages: string[] = [];
      // 20,000 x "é€😀" is 180,000 bytes: the agent's 64 KiB frames cut characters.
      const r = await c.client.callTool(
        'run_command',
        { sandbox_id: sandboxId, command: "i=0; while [ $i -lt 20000 ]; do printf 'é€😀'; i=$((i+1)); done > /tmp/mb.txt; cat /tmp/mb.txt" },
        { onprogress: (p) => void (p.message !== undefined && messages.push(p.message)) },
      );
      assert.notEqual(r.isError, true, text(r));
      assert.equal((r.structuredContent as { stdout: string }).stdout, 'é€😀'.repeat(20_000));
      assert.ok(messages.length > 0);
      for (const m of messages) {
        assert.equal(m.includes('\uFFFD'), false, 'no replacement character in a progress message');
        assert.equal(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(m), false, 'no half of a surrogate pair');
      }
    });

    it('cancelling the request kills the command', async () => {
      const marker = `sleep-${kind}-${Date.now() % 100000}`;
      const ac = new AbortController();
      const pending = c.client.callTool('run_command', { sandbox_id: sandboxId, command: `sleep 30 # ${marker}`, timeout_ms: 60_000 }, { signal: ac.signal });
      pending.catch(() => undefined);
      type Proc = { pid: number; cmd: string[]; running: boolean };
      const find = async (): Promise<Proc | undefined> =>
        ((await api(d.url, 'GET', `/v1/sandboxes/${sandboxId}/commands`)).json.processes as Proc[]).find((p) => p.cmd.join(' ').includes(marker));
      let proc: Proc | undefined;
      for (let i = 0; i < 100 && !proc?.running; i++) {
        proc = await find();
        if (!proc?.running) await sleep(100);
      }
      assert.ok(proc?.running, 'the command started');
      ac.abort();
      await assert.rejects(pending);
      let after: Proc | undefined = proc;
      for (let i = 0; i < 50 && after?.running; i++) {
        await sleep(100);
        after = await find();
      }
      assert.equal(after?.running, false, `process ${proc.pid} was killed`);
      // The session still works after a cancellation.
      const r = await call('run_command', { sandbox_id: sandboxId, command: 'echo still here' });
      assert.equal((r.structuredContent as { stdout: string }).stdout, 'still here\n');
    });

    it('runs bash code with run_code only where its driver runs (busybox has no python3)', async () => {
      const r = await call('run_code', { sandbox_id: sandboxId, language: 'bash', code: 'echo 42' });
      assert.equal(r.isError, true);
      assert.match(text(r), /python3 is not installed/);
    });
  });
}

describe('mcp over http: guards', () => {
  const headers = (extra: Record<string, string>) => ({
    'content-type': 'application/json',
    accept: 'application/json, text/event-stream',
    ...authHeaders(d.url),
    ...extra,
  });

  it('refuses a foreign Host (DNS rebinding) with 403', async () => {
    const r = await rawPost(`${d.url}/mcp`, headers({ host: 'evil.example' }), INIT_BODY);
    assert.equal(r.status, 403, r.body);
    assert.match(JSON.parse(r.body).error.message, /Host header "evil.example" is not allowed/);
  });

  it('refuses a foreign Origin with 403', async () => {
    const port = new URL(d.url).port;
    const r = await rawPost(`${d.url}/mcp`, headers({ host: `localhost:${port}`, origin: 'http://evil.example' }), INIT_BODY);
    assert.equal(r.status, 403, r.body);
    assert.match(JSON.parse(r.body).error.message, /Origin "http:\/\/evil.example" is not allowed/);
  });

  it('accepts loopback Host and Origin', async () => {
    const port = new URL(d.url).port;
    for (const host of [`localhost:${port}`, `127.0.0.1:${port}`]) {
      const r = await rawPost(`${d.url}/mcp`, headers({ host, origin: `http://localhost:${port}` }), INIT_BODY);
      assert.equal(r.status, 200, `${host}: ${r.body}`);
      assert.match(r.body, /"protocolVersion":"2025-11-25"/);
    }
  });

  it('answers bad JSON and unknown sessions with JSON-RPC errors', async () => {
    const bad = await rawPost(`${d.url}/mcp`, headers({}), '{not json');
    assert.equal(bad.status, 400);
    assert.match(bad.body, /-32700/);
    const gone = await rawPost(`${d.url}/mcp`, headers({ 'mcp-session-id': 'nope' }), JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'ping' }));
    assert.equal(gone.status, 404);
  });
});
