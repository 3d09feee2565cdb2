/** The state machine's table and the store's compare-and-set transitions (real SQLite, no sandboxes). */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { openDb } from '../../../src/store/db.js';
import { DEFAULT_POLICY } from '../../../src/sandboxes/policy.js';
import { SandboxStore, type SandboxRecord } from '../../../src/sandboxes/store.js';
import {
  canTransition,
  isTerminal,
  LIVE_STATES,
  requireState,
  SANDBOX_STATES,
  TERMINAL_STATES,
  TRANSITIONS,
} from '../../../src/sandboxes/lifecycle.js';
import { SandboxState } from '../../../src/schemas/sandboxes.js';

describe('the sandbox state machine', () => {
  it('lets every live state end, and nothing leave a terminal state', () => {
    for (const s of SANDBOX_STATES) {
      for (const t of TERMINAL_STATES) assert.equal(canTransition(s, t), !isTerminal(s), `${s} -> ${t}`);
      if (isTerminal(s)) assert.deepEqual(TRANSITIONS[s], []);
    }
  });
  it('names only known states and reaches every state from creating', () => {
    const seen = new Set<string>(['creating']);
    const queue = ['creating' as const];
    for (let s = queue.shift(); s; s = queue.shift()) {
      for (const t of TRANSITIONS[s]) {
        assert.ok((SANDBOX_STATES as readonly string[]).includes(t), t);
        if (!seen.has(t)) {
          seen.add(t);
          queue.push(t as never);
        }
      }
    }
    assert.deepEqual([...seen].sort(), [...SANDBOX_STATES].sort());
  });
  it('never goes back to creating, and running is reached only from creating and the return legs', () => {
    for (const s of SANDBOX_STATES) assert.equal(canTransition(s, 'creating'), false);
    const into = SANDBOX_STATES.filter((s) => canTransition(s, 'running')).sort();
    assert.deepEqual(into, ['creating', 'hibernating', 'pausing', 'restoring', 'resuming', 'snapshotting', 'starting']);
  });
  it('hibernated is a resting state like stopped: left only to restore, stop or an end', () => {
    assert.ok(canTransition('running', 'hibernating'));
    assert.equal(canTransition('paused', 'hibernating'), false);
    assert.deepEqual([...TRANSITIONS.hibernated].sort(), ['expired', 'failed', 'killed', 'restoring', 'stopping']);
    // A failed dump runs on; a failed restore stays hibernated.
    assert.ok(canTransition('hibernating', 'running'));
    assert.ok(canTransition('restoring', 'hibernated'));
    assert.doesNotThrow(() => requireState('sbx-x', 'hibernated', 'resume', 'resume'));
    assert.doesNotThrow(() => requireState('sbx-x', 'hibernated', 'stop', 'stop'));
    assert.throws(() => requireState('sbx-x', 'hibernated', 'use', 'run a command'), /sandbox sbx-x is hibernated/);
  });
  it('refuses an operation in a state that does not admit it, naming the state', () => {
    assert.doesNotThrow(() => requireState('sbx-x', 'running', 'use', 'run a command'));
    assert.throws(
      () => requireState('sbx-x', 'killed', 'use', 'run a command', 'killed by request'),
      (e: any) => e.code === 'conflict' && e.details.state === 'killed' && /sandbox sbx-x is killed \(killed by request\)/.test(e.message),
    );
    assert.throws(() => requireState('sbx-x', 'creating', 'setTimeout', 'set the timeout'), /is creating/);
  });
  it('the API schema knows every state', () => {
    for (const s of SANDBOX_STATES) assert.equal(SandboxState.safeParse(s).success, true);
    assert.equal(LIVE_STATES.length + TERMINAL_STATES.length, SANDBOX_STATES.length);
  });
});

describe('SandboxStore.transition (compare-and-set)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-store-'));
  const db = openDb(path.join(dir, 'capsule.db'));
  const store = new SandboxStore(db);
  after(() => {
    db.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  let n = 0;
  function row(state: SandboxRecord['state'] = 'creating'): string {
    const id = `sbx-test${String(n++).padStart(8, '0')}`;
    const now = Date.now();
    store.insert({
      id, template: 'busybox', state, owner: null, createdAt: now, expiresAt: now + 1000, envs: {}, metadata: {},
      resources: { cpus: 1, memoryMb: 64, pids: 64, diskMb: 64 }, endedAt: null, endReason: null, stateChangedAt: now, runtime: 'crun', defaults: {},
      lifecycle: { ...DEFAULT_POLICY }, timeoutMs: 1000, remainingMs: null, volumes: [], layers: [], snapshot: null,
    });
    return id;
  }

  it('moves a sandbox when the state is the one expected, and records the end', () => {
    const id = row();
    assert.deepEqual(store.transition(id, ['creating'], 'running', { expiresAt: 42 }), { ok: true, from: 'creating' });
    assert.equal(store.get(id)!.expiresAt, 42);
    assert.deepEqual(store.transition(id, LIVE_STATES, 'killed', { reason: 'killed by request', at: 7 }), { ok: true, from: 'running' });
    const r = store.get(id)!;
    assert.equal(r.state, 'killed');
    assert.equal(r.endReason, 'killed by request');
    assert.equal(r.endedAt, 7);
    assert.equal(r.stateChangedAt, 7);
  });
  it('the second of two racing transitions loses and learns the winner', () => {
    const id = row();
    assert.equal(store.transition(id, ['creating'], 'killed', { reason: 'kill' }).ok, true);
    // The create finishing after the kill: must not bring the sandbox back.
    assert.deepEqual(store.transition(id, ['creating'], 'running'), { ok: false, current: 'killed' });
    assert.deepEqual(store.transition(id, LIVE_STATES, 'expired'), { ok: false, current: 'killed' });
    assert.equal(store.get(id)!.state, 'killed');
    assert.equal(store.get(id)!.endReason, 'kill');
  });
  it('refuses moves the table does not allow, even when asked from the right state', () => {
    const id = row('running');
    assert.deepEqual(store.transition(id, ['running'], 'creating'), { ok: false, current: 'running' });
    assert.deepEqual(store.transition(id, ['running'], 'stopped'), { ok: false, current: 'running' });
    assert.deepEqual(store.transition('sbx-nosuchthing', LIVE_STATES, 'killed'), { ok: false, current: undefined });
  });
  it('sets the expiry only in the state the caller saw', () => {
    const id = row('running');
    assert.equal(store.setExpiry(id, 'running', 99), true);
    store.transition(id, LIVE_STATES, 'expired', { reason: 'timeout passed' });
    assert.equal(store.setExpiry(id, 'running', 1234), false);
    assert.equal(store.get(id)!.expiresAt, 99);
  });
});
