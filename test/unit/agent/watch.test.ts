/**
 * File watches (protocol 1.2, feature watch) against the real agent run as a
 * host process: paths relative to the watched directory, recursion into
 * directories made later (and what was made in them before their watch
 * existed), renames of watched directories, the bounded queue's overflow
 * event, and the end when the watched directory goes away.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { connectAgent } from '../../../src/agent/client.js';
import type { AgentConnection, AgentWatch, WatchEvent } from '../../../src/agent/types.js';
import { NotFoundError } from '../../../src/errors/index.js';
import { startAgent, type RunningAgent } from './helpers.js';

function recorder(w: AgentWatch) {
  const events: WatchEvent[] = [];
  w.on('event', (e) => events.push(e));
  return {
    events,
    async until(pred: (e: WatchEvent) => boolean, ms = 5000): Promise<WatchEvent> {
      const deadline = Date.now() + ms;
      for (;;) {
        const e = events.find(pred);
        if (e) return e;
        if (Date.now() > deadline) throw new Error(`timed out; events so far: ${JSON.stringify(events.slice(-20))}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}

const has = (type: string, p: string) => (e: WatchEvent) => e.type === type && e.path === p;

describe('agent file watches', () => {
  let agent: RunningAgent;
  let conn: AgentConnection;
  let dir: string;

  before(async () => {
    agent = await startAgent();
    conn = await connectAgent(agent.socketPath, { timeoutMs: 3000 });
  });
  after(async () => {
    conn.close();
    await agent.stop();
  });

  it('reports create, write, chmod, rename and remove relative to the watched directory', async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-watch-'));
    const w = await conn.watch(dir, { recursive: false });
    const r = recorder(w);
    fs.writeFileSync(path.join(dir, 'a.txt'), 'x');
    fs.appendFileSync(path.join(dir, 'a.txt'), 'y');
    fs.chmodSync(path.join(dir, 'a.txt'), 0o600);
    fs.renameSync(path.join(dir, 'a.txt'), path.join(dir, 'b.txt'));
    fs.unlinkSync(path.join(dir, 'b.txt'));
    fs.mkdirSync(path.join(dir, 'sub'));
    await r.until(has('create', 'sub'));
    // The kernel merges an event with an identical one still unread (two writes may be one).
    const seq = r.events.map((e) => `${e.type} ${e.path}${e.isDir ? '/' : ''}`).filter((e, i, all) => e !== all[i - 1]);
    assert.deepEqual(seq, ['create a.txt', 'write a.txt', 'chmod a.txt', 'rename a.txt', 'create b.txt', 'remove b.txt', 'create sub/']);
    w.close();
    assert.deepEqual(await w.ended, { reason: 'closed' });
  });

  it('follows nested directories, including ones made after it started and renamed ones', async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-watch-'));
    fs.mkdirSync(path.join(dir, 'old', 'deep'), { recursive: true });
    const w = await conn.watch(dir, { recursive: true });
    const r = recorder(w);
    fs.writeFileSync(path.join(dir, 'old', 'deep', 'f'), '1');
    await r.until(has('create', 'old/deep/f'));
    // Made at once: the watch on x is added after x/y/z exist, so they are announced by a scan.
    fs.mkdirSync(path.join(dir, 'x', 'y', 'z'), { recursive: true });
    await r.until(has('create', 'x/y/z'));
    fs.writeFileSync(path.join(dir, 'x', 'y', 'z', 'late.txt'), 'late');
    await r.until(has('write', 'x/y/z/late.txt'));
    fs.renameSync(path.join(dir, 'x'), path.join(dir, 'moved'));
    await r.until(has('create', 'moved'));
    fs.writeFileSync(path.join(dir, 'moved', 'y', 'after-move'), '1');
    await r.until(has('create', 'moved/y/after-move'));
    fs.rmSync(path.join(dir, 'moved'), { recursive: true });
    await r.until(has('remove', 'moved'));
    w.close();
  });

  it('a full queue becomes one overflow event, and later events still arrive', async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-watch-'));
    const w = await conn.watch(dir);
    const r = recorder(w);
    w.pause(); // no credit goes back: the agent's queue fills
    // 5,000 events of ~200 bytes: 1 MB, beyond the credit window and the agent's 256 KiB queue together.
    for (let i = 0; i < 5_000; i++) fs.writeFileSync(path.join(dir, `f${i}`.padEnd(200, '.')), '');
    await new Promise((res) => setTimeout(res, 300));
    w.resume();
    await r.until((e) => e.type === 'overflow');
    fs.writeFileSync(path.join(dir, 'after'), '');
    await r.until(has('create', 'after'));
    const overflowAt = r.events.findIndex((e) => e.type === 'overflow');
    assert.ok(r.events.length < 5_000, `events were dropped, not all kept (${r.events.length})`);
    assert.equal(r.events.filter((e) => e.type === 'overflow').length, 1);
    assert.ok(overflowAt > 0 && r.events.slice(0, overflowAt).every((e) => e.type !== 'overflow'));
    w.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('ends when the watched directory is removed; a missing one is not found', async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-watch-'));
    const w = await conn.watch(dir);
    fs.rmSync(dir, { recursive: true });
    assert.deepEqual(await w.ended, { reason: 'gone' });
    await assert.rejects(conn.watch(dir), NotFoundError);
  });
});
