/**
 * The sandbox log (src/sandboxes/events.ts) over a real SQLite file and a real SandboxStore: lifecycle
 * events come from the store's writes, entries are bounded per sandbox and cut to length, reads see
 * what was recorded before them, and only the sandbox's owner may read them.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { openDb, type Db } from '../../../src/store/db.js';
import { SandboxEventLog } from '../../../src/sandboxes/events.js';
import { SandboxStore } from '../../../src/sandboxes/store.js';
import { record } from '../../helpers/sandbox-record.js';
import { NotFoundError } from '../../../src/errors/index.js';
import { SYSTEM_CONTEXT, type RequestContext } from '../../../src/auth/context.js';

const OTHER = { ...SYSTEM_CONTEXT, principal: { ...SYSTEM_CONTEXT.principal, admin: false, owner: 'someone-else' } } as RequestContext;

describe('SandboxEventLog', () => {
  let dir: string;
  let db: Db;
  let store: SandboxStore;
  let log: SandboxEventLog;

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-events-'));
    db = openDb(path.join(dir, 'capsule.db'));
    store = new SandboxStore(db);
    // Owner check as the manager does it: only the system context (or the owner) sees a sandbox.
    const sandboxes = {
      get: (ctx: RequestContext, id: string) => {
        const rec = store.get(id);
        if (!rec || ctx === OTHER) throw new NotFoundError(`sandbox ${id} not found`);
        return rec;
      },
    };
    log = new SandboxEventLog(db, sandboxes, { maxPerSandbox: 5, flushMs: 10_000 });
    log.attach(store);
  });
  after(() => {
    log.close();
    db.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('records creation and every state change the store writes, in order, and reads what is not flushed yet', () => {
    const id = 'sbx-aaaaaaaaaaa1';
    store.insert(record(id));
    assert.equal(store.transition(id, ['creating'], 'running').ok, true);
    assert.equal(store.transition(id, ['running'], 'pausing').ok, true);
    assert.equal(store.transition(id, ['pausing'], 'paused').ok, true);
    assert.equal(store.transition(id, ['running'], 'killed').ok, false, 'a refused transition is not logged');
    assert.equal(store.transition(id, ['paused'], 'killed', { reason: 'killed by the API' }).ok, true);
    const { entries, cursor } = log.list(SYSTEM_CONTEXT, id, { level: 'debug' });
    assert.deepEqual(
      entries.map((e) => e.event),
      ['state.creating', 'state.running', 'state.pausing', 'state.paused', 'state.killed'],
    );
    assert.equal(entries[4]!.message, 'killed: killed by the API');
    assert.deepEqual(entries[4]!.fields, { from: 'paused', to: 'killed', reason: 'killed by the API' });
    assert.equal(cursor, entries[4]!.seq);
    // info and above leaves out the transitional state; a cursor gives what comes after it.
    assert.deepEqual(
      log.list(SYSTEM_CONTEXT, id, { level: 'info' }).entries.map((e) => e.event),
      ['state.creating', 'state.running', 'state.paused', 'state.killed'],
    );
    assert.deepEqual(log.list(SYSTEM_CONTEXT, id, { since: cursor }).entries, []);
    assert.deepEqual(
      log.list(SYSTEM_CONTEXT, id, { order: 'desc', limit: 2, level: 'debug' }).entries.map((e) => e.event),
      ['state.killed', 'state.paused'],
    );
  });

  it('keeps at most maxPerSandbox entries per sandbox (the newest), without touching other sandboxes', () => {
    const a = 'sbx-aaaaaaaaaaa2';
    const b = 'sbx-aaaaaaaaaaa3';
    store.insert(record(a));
    store.insert(record(b));
    for (let i = 0; i < 12; i++) log.record(a, { level: 'info', event: 'command.end', message: `pid ${i} exited with code 0` });
    const kept = log.list(SYSTEM_CONTEXT, a, { limit: 100 }).entries;
    assert.equal(kept.length, 5);
    assert.deepEqual(
      kept.map((e) => e.message),
      [7, 8, 9, 10, 11].map((i) => `pid ${i} exited with code 0`),
    );
    assert.equal(log.list(SYSTEM_CONTEXT, b).entries.length, 1, "b's own creation is still there");
    assert.deepEqual(
      log.list(SYSTEM_CONTEXT, a, { search: 'pid 9 ' }).entries.map((e) => e.message),
      ['pid 9 exited with code 0'],
    );
  });

  it('builds an entry given as a function when it writes the batch, in order, with the time of the call', () => {
    const id = 'sbx-aaaaaaaaaaa6';
    store.insert(record(id));
    let built = 0;
    const before = Date.now();
    log.record(id, () => {
      built++;
      return { level: 'info', event: 'command.start', message: 'started pid 7: true', fields: { pid: 7 } };
    });
    log.record(id, { level: 'info', event: 'command.end', message: 'pid 7 exited with code 0' });
    assert.equal(built, 0, 'not built on the hot path');
    const entries = log.list(SYSTEM_CONTEXT, id, { limit: 100 }).entries.filter((e) => e.event.startsWith('command.'));
    assert.equal(built, 1);
    assert.deepEqual(entries.map((e) => [e.event, e.message, e.fields]), [
      ['command.start', 'started pid 7: true', { pid: '7' }],
      ['command.end', 'pid 7 exited with code 0', {}],
    ]);
    assert.ok(Date.parse(entries[0]!.at) >= before && Date.parse(entries[0]!.at) <= Date.now());
  });

  it('cuts long messages and fields, and drops fields beyond the bound', () => {
    const id = 'sbx-aaaaaaaaaaa4';
    store.insert(record(id));
    const fields: Record<string, string> = {};
    for (let i = 0; i < 40; i++) fields[`k${i}`] = 'v'.repeat(10_000);
    log.record(id, { level: 'warn', event: 'command.end', message: 'x'.repeat(100_000), fields });
    const e = log.list(SYSTEM_CONTEXT, id, { level: 'warn' }).entries[0]!;
    assert.ok(e.message.length <= 500, `message of ${e.message.length}`);
    assert.ok(Object.keys(e.fields).length <= 16);
    assert.ok(Object.values(e.fields).every((v) => v.length <= 300));
  });

  it("answers another owner's request for a sandbox's log with not_found", () => {
    const id = 'sbx-aaaaaaaaaaa5';
    store.insert(record(id));
    assert.throws(() => log.list(OTHER, id), NotFoundError);
    assert.throws(() => log.list(SYSTEM_CONTEXT, 'sbx-zzzzzzzzzzzz'), NotFoundError);
  });
});
