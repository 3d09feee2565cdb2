/**
 * Process rows written behind the exec path: a short foreground command never
 * reaches SQLite, a background one does at once, and whatever waits is written
 * by a flush (timer or close) in one transaction.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { openDb, type Db } from '../../../src/store/db.js';
import { ProcessJournal } from '../../../src/sandboxes/process-journal.js';
import { SandboxStore, type ProcessRecord } from '../../../src/sandboxes/store.js';

const rec = (sandboxId: string, pid: number): ProcessRecord => ({
  sandboxId,
  pid,
  argv: ['sleep', String(pid)],
  cwd: '/work',
  startedAt: 1_700_000_000_000 + pid,
  endedAt: null,
  exitCode: null,
});

describe('ProcessJournal', () => {
  let dir: string;
  let db: Db;
  let store: SandboxStore;

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-journal-'));
    db = openDb(path.join(dir, 'capsule.db'));
    store = new SandboxStore(db);
  });
  after(() => {
    db.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  // A long interval: the tests flush by hand, so nothing depends on timing.
  const journal = () => new ProcessJournal(store, { flushMs: 60_000 });

  it('never writes a foreground row whose process ended before the flush', () => {
    const j = journal();
    j.started(rec('sbx-a', 10), false);
    assert.deepEqual(j.get('sbx-a', 10), rec('sbx-a', 10), 'visible before it is written');
    assert.equal(store.getProcess('sbx-a', 10), undefined);
    j.ended('sbx-a', 10, rec('sbx-a', 10).startedAt, 0, Date.now());
    j.close();
    assert.equal(store.getProcess('sbx-a', 10), undefined);
    assert.equal(j.get('sbx-a', 10), undefined);
  });

  it('writes a durable (background) row at once', () => {
    const j = journal();
    j.started(rec('sbx-a', 11), true);
    assert.deepEqual(store.getProcess('sbx-a', 11), rec('sbx-a', 11));
    j.close();
  });

  it('writes a still-running foreground row at the flush, and its exit at a later one', () => {
    const j = journal();
    j.started(rec('sbx-a', 12), false);
    j.flush();
    assert.deepEqual(store.getProcess('sbx-a', 12), rec('sbx-a', 12));
    j.ended('sbx-a', 12, rec('sbx-a', 12).startedAt, 3, 1_700_000_001_000);
    assert.equal(store.getProcess('sbx-a', 12)?.exitCode, null, 'the exit waits for the next flush');
    j.close();
    assert.equal(store.getProcess('sbx-a', 12)?.exitCode, 3);
    assert.equal(store.getProcess('sbx-a', 12)?.endedAt, 1_700_000_001_000);
  });

  it('keeps the waiting row of a later process that reused the pid', () => {
    const j = journal();
    const later = { ...rec('sbx-a', 14), startedAt: rec('sbx-a', 14).startedAt + 5 };
    j.started(rec('sbx-a', 14), false);
    j.started(later, false);
    j.ended('sbx-a', 14, rec('sbx-a', 14).startedAt, 0, Date.now());
    j.close();
    assert.deepEqual(store.getProcess('sbx-a', 14), later);
  });

  it('flushes on its own after flushMs', async () => {
    const j = new ProcessJournal(store, { flushMs: 5 });
    j.started(rec('sbx-b', 13), false);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(store.getProcess('sbx-b', 13), rec('sbx-b', 13));
    j.close();
  });

  it('forgets a sandbox: written rows, waiting rows and waiting exits', () => {
    const j = journal();
    j.started(rec('sbx-c', 20), true);
    j.started(rec('sbx-c', 21), false);
    j.started(rec('sbx-d', 22), false);
    j.ended('sbx-c', 20, rec('sbx-c', 20).startedAt, 0, Date.now());
    j.dropSandbox('sbx-c');
    j.close();
    assert.equal(store.getProcess('sbx-c', 20), undefined);
    assert.equal(store.getProcess('sbx-c', 21), undefined);
    assert.deepEqual(store.getProcess('sbx-d', 22), rec('sbx-d', 22), 'other sandboxes are untouched');
  });

  it('reports a failed batch to onError instead of throwing from its timer', async () => {
    const errors: unknown[] = [];
    const broken = Object.create(store) as SandboxStore;
    broken.inTransaction = () => {
      throw new Error('disk I/O error');
    };
    const j = new ProcessJournal(broken, { flushMs: 1, onError: (e) => errors.push(e) });
    j.started(rec('sbx-e', 30), false);
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(errors.length, 1);
    assert.match(String(errors[0]), /disk I\/O error/);
  });
});
