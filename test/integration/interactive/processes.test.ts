/**
 * Background processes you can leave and come back to, against a real daemon
 * and real crun sandboxes: reconnecting replays recent output (bounded) and
 * then follows live output, tags name processes for list, connect and kill,
 * and stdin streams over one WebSocket.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { api } from '../../helpers/daemon.js';
import { sandboxFixture } from '../../helpers/sandbox-fixture.js';
import { ConflictError, NotFoundError } from '../../../src/sdk/index.js';

async function until(pred: () => boolean, what: () => string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('processes: reconnect, tags, streamed stdin', () => {
  const f = sandboxFixture();

  it('a client leaves a background command and comes back to later output', async () => {
    let first = '';
    const h = await f.sbx.commands.run('i=0; while [ $i -lt 400 ]; do echo "line $i"; i=$((i+1)); sleep 0.02; done', {
      background: true,
      tag: 'ticker',
      onStdout: (s) => void (first += s),
    });
    await until(() => first.includes('line 3\n'), () => first);
    h.disconnect();
    const seenBefore = first;
    await new Promise((r) => setTimeout(r, 400));
    let second = '';
    const again = await f.sbx.commands.connect('ticker', { onStdout: (s) => void (second += s) });
    assert.equal(again.pid, h.pid);
    await until(() => /line 39\d\n/.test(second), () => second.slice(-200), 20_000);
    // The replay is the recent output (all of it here: well under 64 KiB), then live output, in order.
    const nums = second.trim().split('\n').map((l) => Number(l.split(' ')[1]));
    assert.deepEqual(nums, nums.map((_, i) => nums[0]! + i), 'contiguous');
    assert.equal(nums[0], 0);
    assert.ok(seenBefore.length < second.length);
    assert.equal((await again.wait()).exitCode, 0);
  });

  it('replays at most 64 KiB of recent output on reconnect', async () => {
    const h = await f.sbx.commands.run('head -c 300000 /dev/zero | tr "\\0" a; echo; echo tail-marker; sleep 30', { background: true });
    await new Promise((r) => setTimeout(r, 1000));
    let got = '';
    const c = await f.sbx.commands.connect(h.pid, { onStdout: (s) => void (got += s) });
    await until(() => got.includes('tail-marker'), () => `${got.length} bytes`);
    assert.ok(got.length <= 64 * 1024, `replayed ${got.length} bytes`);
    c.disconnect();
    await h.kill();
  });

  it('lists, connects to and kills processes by tag', async () => {
    await f.sbx.commands.run('sleep 60', { background: true, tag: 'sleeper' });
    await f.sbx.commands.run('sleep 60', { background: true, tag: 'other' });
    await assert.rejects(f.sbx.commands.run('sleep 1', { background: true, tag: 'sleeper' }), ConflictError);
    const tagged = await f.sbx.commands.list({ tag: 'sleeper' });
    assert.equal(tagged.length, 1);
    assert.equal(tagged[0]!.tag, 'sleeper');
    assert.equal(tagged[0]!.running, true);
    await f.sbx.commands.kill('sleeper');
    const r = await api(f.d.url, 'GET', `/v1/sandboxes/${f.sbx.id}/commands/sleeper/wait?timeoutMs=5000`);
    assert.equal(r.json.exitCode, 137);
    assert.equal((await f.sbx.commands.list({ tag: 'other' }))[0]!.running, true, 'only the tagged one');
    // Finished, the tag is free again; bad tags are invalid input, unknown ones not found.
    await f.sbx.commands.run('true', { tag: 'sleeper' });
    assert.equal((await api(f.d.url, 'DELETE', `/v1/sandboxes/${f.sbx.id}/commands/no-such-tag`)).status, 404);
    assert.equal((await api(f.d.url, 'POST', `/v1/sandboxes/${f.sbx.id}/commands`, { cmd: 'true', tag: '123' })).status, 400);
    await assert.rejects(f.sbx.commands.connect('never-was'), NotFoundError);
    await f.sbx.commands.kill('other');
  });

  it('streams stdin over one WebSocket', async () => {
    let out = '';
    const h = await f.sbx.commands.run('tr a-z A-Z', { background: true, streamStdin: true, onStdout: (s) => void (out += s) });
    for (let i = 0; i < 50; i++) await h.sendStdin(`chunk ${i} `);
    await h.sendStdin('', { eof: true });
    const r = await h.wait();
    assert.equal(r.exitCode, 0);
    const want = Array.from({ length: 50 }, (_, i) => `CHUNK ${i} `).join('');
    assert.equal(out, want);
    // The same on a process connected later, by tag.
    await f.sbx.commands.run('cat > /tmp/streamed.txt', { background: true, tag: 'writer' });
    const w = await f.sbx.commands.connect('writer', { streamStdin: true });
    await w.sendStdin(new Uint8Array([0, 1, 2, 255]));
    await w.sendStdin('end', { eof: true });
    assert.equal((await w.wait()).exitCode, 0);
    assert.deepEqual([...Buffer.from(await f.sbx.files.read('/tmp/streamed.txt', { format: 'bytes' }))], [0, 1, 2, 255, 101, 110, 100]);
  });
});
