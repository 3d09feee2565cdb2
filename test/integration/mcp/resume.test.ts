/**
 * SSE resumability of a 2025-era session (Last-Event-ID): the connection of a
 * slow run_command is cut after two progress notifications; a GET with the
 * last event id gets what was missed and the final result, each exactly once.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { api, authHeaders, removeDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { INIT_BODY, startMcpDaemon } from './fixture.js';
import { openSse, type SseEvent } from './wire.js';

let d: TestDaemon;
let sandboxId: string;
let session: string;

type Rpc = { id?: number; result?: { structuredContent?: { stdout: string; exit_code: number } }; method?: string; params?: { progress: number; message?: string } };

const headers = (extra: Record<string, string> = {}) => ({
  'content-type': 'application/json',
  accept: 'application/json, text/event-stream',
  'mcp-protocol-version': '2025-11-25',
  ...authHeaders(d.url),
  ...extra,
});

before(async () => {
  d = await startMcpDaemon();
  sandboxId = (await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' })).json.id as string;
  const init = await openSse(`${d.url}/mcp`, 'POST', headers(), INIT_BODY);
  session = String(init.headers['mcp-session-id']);
  await init.next();
  const note = await openSse(`${d.url}/mcp`, 'POST', headers({ 'mcp-session-id': session }), JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }));
  assert.equal(note.status, 202);
});
after(async () => {
  if (sandboxId) await api(d.url, 'DELETE', `/v1/sandboxes/${sandboxId}`).catch(() => undefined);
  await d?.stop();
  if (d) await removeDataDir(d.dataDir);
});

describe('mcp over http: resuming a dropped SSE stream', () => {
  it('replays the missed progress and the result exactly once after Last-Event-ID', async () => {
    const call = JSON.stringify({
      jsonrpc: '2.0',
      id: 7,
      method: 'tools/call',
      params: { name: 'run_command', arguments: { sandbox_id: sandboxId, command: 'for i in 1 2 3 4 5 6; do echo line$i; sleep 0.25; done' }, _meta: { progressToken: 'p' } },
    });
    const first = await openSse(`${d.url}/mcp`, 'POST', headers({ 'mcp-session-id': session }), call);
    assert.equal(first.status, 200);
    const priming = await first.next();
    assert.ok(priming?.id && priming.data === '', `a priming event first: ${JSON.stringify(priming)}`);
    const seen: SseEvent[] = [];
    let lastId = priming.id;
    while (seen.filter((e) => e.data).length < 2) {
      const e = await first.next();
      assert.ok(e, 'stream ended early');
      assert.ok(e.id, 'every event has an id');
      seen.push(e);
      lastId = e.id;
    }
    first.drop();
    // Let the command run on while nobody listens: these events are the ones to replay.
    await new Promise((r) => setTimeout(r, 700));

    const again = await openSse(`${d.url}/mcp`, 'GET', { accept: 'text/event-stream', ...authHeaders(d.url), 'mcp-session-id': session, 'last-event-id': lastId });
    assert.equal(again.status, 200);
    const replayed: SseEvent[] = [];
    for (let e = await again.next(); e; e = await again.next()) replayed.push(e);

    const msgs = [...seen, ...replayed].filter((e) => e.data).map((e) => JSON.parse(e.data) as Rpc);
    const progress = msgs.filter((m) => m.method === 'notifications/progress').map((m) => m.params!.progress);
    assert.deepEqual(progress, progress.map((_, i) => i + 1), `progress once each, in order: ${progress.join(',')}`);
    assert.ok(progress.length >= 6, `all progress arrived: ${progress.join(',')}`);
    const responses = msgs.filter((m) => m.id === 7);
    assert.equal(responses.length, 1, 'the result exactly once');
    assert.equal(responses[0]!.result!.structuredContent!.stdout, 'line1\nline2\nline3\nline4\nline5\nline6\n');
    assert.ok(replayed.some((e) => e.data.includes('notifications/progress')), 'some progress came only through the replay');
    const ids = [...seen, ...replayed].map((e) => e.id);
    assert.equal(new Set(ids).size, ids.length, 'event ids are unique');
  });

  it('answers 404 to an id it does not know, and keeps other sessions apart', async () => {
    const bogus = await openSse(`${d.url}/mcp`, 'GET', { accept: 'text/event-stream', ...authHeaders(d.url), 'mcp-session-id': session, 'last-event-id': 's999_1' });
    assert.equal(bogus.status, 404);
    bogus.drop();
    const other = await openSse(`${d.url}/mcp`, 'POST', headers(), INIT_BODY);
    const otherSession = String(other.headers['mcp-session-id']);
    // s1 exists in the first session only: another session cannot read it.
    const cross = await openSse(`${d.url}/mcp`, 'GET', { accept: 'text/event-stream', ...authHeaders(d.url), 'mcp-session-id': otherSession, 'last-event-id': 's1_0' });
    assert.equal(cross.status, 404);
    cross.drop();
  });
});
