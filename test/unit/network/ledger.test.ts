/** The egress ledger: cursors, open/closed writes of one connection, long polls, the bound per sandbox. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { openDb } from '../../../src/store/db.js';
import { EgressLedger, MAX_ENTRIES_PER_SANDBOX, type NewEntry } from '../../../src/network/ledger.js';

const entry = (sandboxId: string, port = 80): NewEntry => ({
  sandboxId, at: Date.now(), protocol: 'tcp', name: 'a.test', address: '203.0.113.1', port, pid: 7, command: 'curl', verdict: 'allowed', rule: 'a.test', reason: 'ok',
});

describe('egress ledger', () => {
  it('an open connection is written again, same id and a newer cursor, when it closes', () => {
    const l = new EgressLedger(openDb(':memory:'));
    const id = l.add(entry('s1'), true);
    const first = l.list('s1', 0, 10);
    assert.equal(first.entries[0]!.state, 'open');
    assert.equal(first.entries[0]!.durationMs, null);
    l.add(entry('s2'), false);
    l.close(id, 's1', { bytesUp: 10, bytesDown: 20, durationMs: 5.4 });
    const next = l.list('s1', first.cursor, 10);
    assert.equal(next.entries.length, 1);
    assert.deepEqual([next.entries[0]!.id, next.entries[0]!.state, next.entries[0]!.bytesUp, next.entries[0]!.bytesDown, next.entries[0]!.durationMs], [id, 'closed', 10, 20, 5]);
    assert.ok(next.cursor > first.cursor);
    assert.deepEqual(l.list('s1', next.cursor, 10).entries, []);
    assert.equal(l.list('s2', 0, 10).entries.length, 1, 'per sandbox');
  });

  it('a long poll wakes on the next entry of its sandbox only, or times out', async () => {
    const l = new EgressLedger(openDb(':memory:'));
    const t0 = Date.now();
    const waiting = l.wait('s1', 0, 5000);
    setTimeout(() => l.add(entry('s2'), false), 20);
    setTimeout(() => l.add(entry('s1'), false), 80);
    await waiting;
    const took = Date.now() - t0;
    assert.ok(took >= 60 && took < 2000, `${took} ms`);
    const t1 = Date.now();
    await l.wait('s3', 0, 100);
    assert.ok(Date.now() - t1 >= 90);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 20);
    await l.wait('s3', 0, 5000, ac.signal);
  });

  it('keeps at most MAX_ENTRIES_PER_SANDBOX per sandbox, dropping the oldest', () => {
    const l = new EgressLedger(openDb(':memory:'));
    for (let i = 0; i < MAX_ENTRIES_PER_SANDBOX + 600; i++) l.add(entry('s1', (i % 60000) + 1), false);
    const all = l.list('s1', 0, 100_000).entries;
    assert.ok(all.length <= MAX_ENTRIES_PER_SANDBOX + 500 && all.length >= MAX_ENTRIES_PER_SANDBOX, String(all.length));
    assert.equal(all[all.length - 1]!.port, ((MAX_ENTRIES_PER_SANDBOX + 599) % 60000) + 1, 'the newest survive');
  });
});
