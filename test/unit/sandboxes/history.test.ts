/**
 * History retention (src/sandboxes/history.ts) over a real SQLite file and a real SandboxStore: an ended
 * sandbox's row, log, process journal, network row and egress ledger go once past retention; live
 * sandboxes, recently ended ones and snapshots taken from a deleted one stay.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, beforeEach, describe, it } from 'node:test';

import { openDb, type Db } from '../../../src/store/db.js';
import { SandboxHistory } from '../../../src/sandboxes/history.js';
import { SandboxStore } from '../../../src/sandboxes/store.js';
import { record } from '../../helpers/sandbox-record.js';

const HOUR = 60 * 60_000;

const count = (db: Db, table: string, id: string): number =>
  (db.prepare(`SELECT COUNT(*) AS n FROM ${table} WHERE ${table === 'sandboxes' ? 'id' : 'sandbox_id'} = ?`).get(id) as { n: number }).n;

describe('SandboxHistory', () => {
  const dirs: string[] = [];
  let db: Db;
  let store: SandboxStore;

  beforeEach(() => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-history-'));
    dirs.push(dir);
    db = openDb(path.join(dir, 'capsule.db'));
    store = new SandboxStore(db);
  });
  after(() => {
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  /** A sandbox with a row in every history table, ended `agoMs` before now (or still running). */
  function sandboxWithHistory(id: string, agoMs: number | 'running'): void {
    store.insert(record(id));
    assert.equal(store.transition(id, ['creating'], 'running').ok, true);
    const now = Date.now();
    db.prepare(`INSERT INTO sandbox_events (sandbox_id, at, level, event, message, fields) VALUES (?, ?, 1, 'command.ended', 'x', '{}')`).run(id, now);
    db.prepare(`INSERT INTO processes (sandbox_id, pid, argv, started_at) VALUES (?, 7, '["true"]', ?)`).run(id, now);
    db.prepare(`INSERT INTO sandbox_network (sandbox_id, egress, public_ports, token) VALUES (?, '{}', '[]', 't')`).run(id);
    db.prepare(
      `INSERT INTO egress_log (seq, sandbox_id, at, protocol, verdict, rule, reason, bytes_up, bytes_down, state) VALUES (1, ?, ?, 'tcp', 'allowed', 'r', 'x', 0, 0, 'closed')`,
    ).run(id, now);
    if (agoMs === 'running') return;
    assert.equal(store.transition(id, ['running'], 'killed', { reason: 'killed by request' }).ok, true);
    db.prepare('UPDATE sandboxes SET ended_at = ? WHERE id = ?').run(now - agoMs, id);
  }

  const tables = ['sandboxes', 'sandbox_events', 'processes', 'sandbox_network', 'egress_log'];

  it('deletes every trace of a sandbox ended before retention, and nothing of live or recent ones', () => {
    sandboxWithHistory('sbx-old', 8 * 24 * HOUR);
    sandboxWithHistory('sbx-recent', HOUR);
    sandboxWithHistory('sbx-live', 'running');
    db.prepare('UPDATE sandboxes SET created_at = 0, state_changed_at = 0 WHERE id = ?').run('sbx-live');
    db.prepare(
      `INSERT INTO snapshots (id, owner, name, sandbox_id, template, layer, chain, config, metadata, size_bytes, created_at)
       VALUES ('snap-1', NULL, 'kept', 'sbx-old', 'busybox', 'l', '[]', '{}', '{}', 0, 0)`,
    ).run();
    const heard: string[] = [];
    const history = new SandboxHistory(db, { retentionMs: 7 * 24 * HOUR });
    history.onPurged((ids) => heard.push(...ids));

    assert.equal(history.purge(), 1);
    assert.deepEqual(heard, ['sbx-old']);
    for (const t of tables) assert.equal(count(db, t, 'sbx-old'), 0, `${t} keeps nothing of the old sandbox`);
    for (const id of ['sbx-recent', 'sbx-live']) for (const t of tables) assert.equal(count(db, t, id), 1, `${t} keeps ${id}`);
    assert.equal(store.get('sbx-old'), undefined);
    assert.equal(store.get('sbx-live')?.state, 'running');
    assert.equal((db.prepare("SELECT COUNT(*) AS n FROM snapshots WHERE id = 'snap-1'").get() as { n: number }).n, 1, 'snapshots are not history');
    assert.equal(history.purge(), 0, 'a second pass finds nothing');
  });

  it('takes a backlog in batches, each one transaction', () => {
    for (let i = 0; i < 7; i++) sandboxWithHistory(`sbx-b${i}`, 2 * HOUR);
    const history = new SandboxHistory(db, { retentionMs: HOUR, batch: 3 });
    const batches: number[] = [];
    history.onPurged((ids) => batches.push(ids.length));
    assert.equal(history.purge(), 7);
    assert.deepEqual(batches, [3, 3, 1]);
    assert.equal((db.prepare('SELECT COUNT(*) AS n FROM sandboxes').get() as { n: number }).n, 0);
  });

  it('keeps everything when retention is 0, and runs at most once per interval', () => {
    sandboxWithHistory('sbx-k', 400 * 24 * HOUR);
    assert.equal(new SandboxHistory(db, { retentionMs: 0 }).purge(), 0);
    assert.equal(count(db, 'sandboxes', 'sbx-k'), 1);

    const history = new SandboxHistory(db, { retentionMs: HOUR, everyMs: 60_000 });
    const t = Date.now();
    sandboxWithHistory('sbx-k2', 'running');
    assert.equal(history.maybePurge(t), 1);
    // Ends (long ago) after the first pass: not looked for again until the interval is over.
    assert.equal(store.transition('sbx-k2', ['running'], 'failed', { reason: 'x' }).ok, true);
    db.prepare('UPDATE sandboxes SET ended_at = 0 WHERE id = ?').run('sbx-k2');
    assert.equal(history.maybePurge(t + 59_000), 0);
    assert.equal(history.maybePurge(t + 60_000), 1);
  });
});
