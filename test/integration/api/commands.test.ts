/** Commands through the REST API against a real daemon and real crun sandboxes. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { api, authHeaders, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';

let d: TestDaemon;
let id: string;

async function run(body: Record<string, unknown>) {
  const r = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, body);
  assert.equal(r.status, body.background ? 202 : 200, r.text);
  return r.json;
}

async function stream(body: Record<string, unknown>): Promise<any[]> {
  const r = await fetch(`${d.url}/v1/sandboxes/${id}/commands`, {
    method: 'POST',
    headers: { ...authHeaders(d.url), 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, stream: true }),
  });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') ?? '', /application\/x-ndjson/);
  const text = await r.text();
  return text.trim().split('\n').map((l) => JSON.parse(l));
}

describe('commands', () => {
  before(async () => {
    d = await startTestDaemon();
    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', envs: { SANDBOX_VAR: 'from-sandbox' } });
    assert.equal(r.status, 201, r.text);
    id = r.json.id;
  });
  after(async () => {
    await d?.stop();
  });

  it('runs a shell string and an argv array', async () => {
    const a = await run({ cmd: 'echo hello; echo oops >&2' });
    assert.equal(a.exitCode, 0);
    assert.equal(a.stdout, 'hello\n');
    assert.equal(a.stderr, 'oops\n');
    const b = await run({ cmd: ['echo', 'a b', '$HOME'] });
    assert.equal(b.stdout, 'a b $HOME\n', 'argv form takes no shell');
  });

  it('reports exit codes and deaths by signal', async () => {
    assert.equal((await run({ cmd: 'exit 42' })).exitCode, 42);
    const k = await run({ cmd: 'kill -9 $$' });
    assert.equal(k.exitCode, 137);
    assert.equal(k.signal, 'SIGKILL');
    const t = await run({ cmd: 'kill -TERM $$' });
    assert.equal(t.exitCode, 143);
  });

  it('a missing command is exit 127 through the shell and a clear error as argv', async () => {
    const r = await run({ cmd: 'no-such-command-xyz' });
    assert.equal(r.exitCode, 127);
    const e = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: ['/no/such/binary'] });
    assert.ok(e.status >= 400 && e.status < 500, e.text);
    assert.ok(e.json.error.code);
  });

  it('passes sandbox envs, command envs and cwd', async () => {
    const r = await run({ cmd: 'echo $SANDBOX_VAR $CMD_VAR; pwd', envs: { CMD_VAR: 'from-cmd' }, cwd: '/tmp' });
    assert.equal(r.stdout, 'from-sandbox from-cmd\n/tmp\n');
    const over = await run({ cmd: 'echo $SANDBOX_VAR', envs: { SANDBOX_VAR: 'overridden' } });
    assert.equal(over.stdout, 'overridden\n');
  });

  it('runs as another user', async () => {
    const r = await run({ cmd: 'id -u; echo $HOME', user: 'user' });
    assert.equal(r.stdout, '1000\n/home/user\n');
  });

  it('feeds stdin', async () => {
    const r = await run({ cmd: 'cat | tr a-z A-Z', stdin: 'shout\n' });
    assert.equal(r.stdout, 'SHOUT\n');
  });

  it('answers a command that ends without reading its stdin with its result, not an error', async () => {
    // Its exit can come before the input is written: the input is dropped, the result stands.
    const runs = await Promise.all(Array.from({ length: 20 }, (_, i) => run({ cmd: `exit ${i % 3}`, stdin: 'x'.repeat(100_000) })));
    assert.deepEqual(
      runs.map((r) => r.exitCode),
      Array.from({ length: 20 }, (_, i) => i % 3),
    );
  });

  it('streams output in order as NDJSON', async () => {
    const events = await stream({ cmd: 'for i in 1 2 3 4 5; do echo $i; sleep 0.05; done; echo done >&2; exit 3' });
    assert.equal(events[0].type, 'start');
    assert.ok(events[0].pid > 0);
    const out = events.filter((e) => e.type === 'stdout').map((e) => e.data).join('');
    assert.equal(out, '1\n2\n3\n4\n5\n');
    assert.ok(events.filter((e) => e.type === 'stdout').length >= 3, 'output arrives in several chunks, as produced');
    const err = events.filter((e) => e.type === 'stderr').map((e) => e.data).join('');
    assert.equal(err, 'done\n');
    assert.deepEqual(events.at(-1), { type: 'exit', exitCode: 3 });
  });

  it('kills a command at its timeout', async () => {
    const t0 = Date.now();
    const r = await run({ cmd: 'echo started; sleep 30', timeoutMs: 500 });
    assert.equal(r.timedOut, true);
    assert.equal(r.exitCode, 137);
    assert.equal(r.stdout, 'started\n');
    assert.ok(Date.now() - t0 < 10_000);
  });

  it('bounds buffered output with an explicit truncation flag', async () => {
    const r = await run({ cmd: 'head -c 300000 /dev/zero | tr "\\0" x', maxOutputBytes: 1000 });
    assert.equal(r.stdout.length, 1000);
    assert.equal(r.stdoutTruncated, true);
  });

  it('manages a background process: list, stdin, wait', async () => {
    const { pid } = await run({ cmd: 'read line; echo got:$line; sleep 0.2; exit 7', background: true });
    assert.ok(pid > 0);
    const list = await api(d.url, 'GET', `/v1/sandboxes/${id}/commands`);
    const p = list.json.processes.find((x: any) => x.pid === pid);
    assert.equal(p.running, true);
    assert.deepEqual(p.cmd, ['/bin/sh', '-c', 'read line; echo got:$line; sleep 0.2; exit 7']);
    const s = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands/${pid}/stdin`, { data: 'ping\n', eof: true });
    assert.equal(s.status, 204, s.text);
    const w = await api(d.url, 'GET', `/v1/sandboxes/${id}/commands/${pid}/wait?timeoutMs=10000`);
    assert.equal(w.status, 200, w.text);
    assert.equal(w.json.exitCode, 7);
    assert.equal(w.json.stdout, 'got:ping\n');
    const after = await api(d.url, 'GET', `/v1/sandboxes/${id}/commands`);
    assert.equal(after.json.processes.find((x: any) => x.pid === pid).running, false);
  });

  it('signals and kills background processes; wait can time out', async () => {
    const { pid } = await run({ cmd: 'trap "echo term; exit 5" TERM; while true; do sleep 0.05; done', background: true });
    const w0 = await api(d.url, 'GET', `/v1/sandboxes/${id}/commands/${pid}/wait?timeoutMs=200`);
    assert.equal(w0.json.error.code, 'timeout');
    await new Promise((r) => setTimeout(r, 100));
    const sig = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands/${pid}/signal`, { signal: 'SIGTERM' });
    assert.equal(sig.status, 204);
    const w = await api(d.url, 'GET', `/v1/sandboxes/${id}/commands/${pid}/wait?timeoutMs=10000`);
    assert.equal(w.json.exitCode, 5);
    assert.equal(w.json.stdout, 'term\n');

    const { pid: p2 } = await run({ cmd: 'sleep 60', background: true });
    assert.equal((await api(d.url, 'DELETE', `/v1/sandboxes/${id}/commands/${p2}`)).status, 204);
    const w2 = await api(d.url, 'GET', `/v1/sandboxes/${id}/commands/${p2}/wait?timeoutMs=10000`);
    assert.equal(w2.json.exitCode, 137);
  });

  it('streams a background process: kept output, then live, then exit', async () => {
    const { pid } = await run({ cmd: 'echo early; sleep 0.3; echo late', background: true });
    await new Promise((r) => setTimeout(r, 100));
    const r = await fetch(`${d.url}/v1/sandboxes/${id}/commands/${pid}/stream`, { headers: authHeaders(d.url) });
    const events = (await r.text()).trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(events.filter((e) => e.type === 'stdout').map((e) => e.data).join(''), 'early\nlate\n');
    assert.equal(events.at(-1).type, 'exit');
  });

  it('applies back-pressure: an endless stream to a client that stops reading does not grow the daemon', async () => {
    const rss = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${d.child.pid}/status`, 'utf8'))![1]) * 1024;
    const before = rss();
    const ac = new AbortController();
    const r = await fetch(`${d.url}/v1/sandboxes/${id}/commands`, {
      method: 'POST',
      headers: { ...authHeaders(d.url), 'content-type': 'application/json' },
      body: JSON.stringify({ cmd: 'cat /dev/zero | tr "\\0" x', stream: true, timeoutMs: 0 }),
      signal: ac.signal,
    });
    assert.equal(r.status, 200);
    const reader = r.body!.getReader();
    await reader.read(); // the stream is live; now stop reading for a while
    await new Promise((res) => setTimeout(res, 2000));
    const grown = rss() - before;
    // Other commands in the same sandbox still answer while the flood is held back.
    const t0 = Date.now();
    assert.equal((await run({ cmd: 'echo still-here' })).stdout, 'still-here\n');
    const otherMs = Date.now() - t0;
    const list = await api(d.url, 'GET', `/v1/sandboxes/${id}/commands`);
    const flood = list.json.processes.find((p: any) => p.running && p.cmd.join(' ').includes('/dev/zero'));
    assert.ok(flood, 'the flooding command is running (blocked on its pipe)');
    ac.abort();
    const w = await api(d.url, 'GET', `/v1/sandboxes/${id}/commands/${flood.pid}/wait?timeoutMs=10000`);
    assert.equal(w.json.exitCode, 137, 'a client that hangs up kills its foreground command');
    console.log(`flood held back: daemon RSS grew ${(grown / 1048576).toFixed(1)} MiB in 2 s; another command took ${otherMs} ms`);
    assert.ok(grown < 128 * 1024 * 1024, `daemon grew by ${grown} bytes`);
  });

  it('runs many commands concurrently', async () => {
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => run({ cmd: ['echo', String(i)] })));
    results.forEach((r, i) => assert.equal(r.stdout, `${i}\n`));
  });
});
