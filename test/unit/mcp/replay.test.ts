/** The SSE replay buffer: ids, replay after an id, and its bounds (events, bytes, finished streams). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EventLog } from '../../../src/mcp/replay.js';

const idOf = (frame: string) => /^id: (\S+)/.exec(frame)?.[1];

describe('EventLog', () => {
  it('gives every event an id on its stream and replays what came after one', () => {
    const log = new EventLog();
    const { streamId, priming } = log.open(1000);
    assert.match(priming, /^id: s1_0\nretry: 1000\ndata: \n\n$/);
    const frames = ['{"a":1}', '{"a":2}', '{"a":3}'].map((j) => log.record(streamId, j));
    assert.deepEqual(frames.map(idOf), ['s1_1', 's1_2', 's1_3']);
    assert.deepEqual(log.after('s1_0'), { kind: 'ok', streamId, frames, finished: false });
    assert.deepEqual(log.after('s1_2'), { kind: 'ok', streamId, frames: [frames[2]], finished: false });
    log.finish(streamId);
    assert.deepEqual(log.after('s1_3'), { kind: 'ok', streamId, frames: [], finished: true });
  });

  it('knows only its own ids', () => {
    const log = new EventLog();
    log.open(1000);
    for (const bad of ['s2_0', 'x', '', 's1', 's1_-1', '../s1_0', 's1_0 ; drop']) assert.deepEqual(log.after(bad), { kind: 'unknown' }, bad);
  });

  it('keeps at most maxEvents and maxBytes per stream, dropping the oldest but never the newest', () => {
    const log = new EventLog({ maxEvents: 3, maxBytes: 1_000, maxFinishedStreams: 4, maxTotalBytes: 100_000 });
    const { streamId } = log.open(1000);
    for (let i = 1; i <= 10; i++) log.record(streamId, `{"n":${i}}`);
    let r = log.after(`${streamId}_0`);
    assert.equal(r.kind, 'ok');
    assert.deepEqual(r.kind === 'ok' && r.frames.map(idOf), ['s1_8', 's1_9', 's1_10']);

    const big = `"${'x'.repeat(600)}"`;
    log.record(streamId, big);
    log.record(streamId, big);
    r = log.after(`${streamId}_0`);
    assert.deepEqual(r.kind === 'ok' && r.frames.map(idOf), ['s1_12']);
    assert.ok(log.heldBytes <= 1_000);
    // One event over the byte limit is still kept: it may be the response the client is waiting for.
    log.record(streamId, `"${'y'.repeat(5_000)}"`);
    r = log.after(`${streamId}_0`);
    assert.deepEqual(r.kind === 'ok' && r.frames.map(idOf), ['s1_13']);
  });

  it('keeps only the newest finished streams, and every live one', () => {
    const log = new EventLog({ maxEvents: 10, maxBytes: 10_000, maxFinishedStreams: 2, maxTotalBytes: 100_000 });
    const live = log.open(1000).streamId;
    const done = [1, 2, 3, 4].map(() => log.open(1000).streamId);
    for (const s of done) {
      log.record(s, '{}');
      log.finish(s);
    }
    assert.equal(log.streamCount, 3);
    assert.deepEqual([live, ...done].map((s) => log.after(`${s}_0`).kind), ['ok', 'unknown', 'unknown', 'ok', 'ok']);
  });

  it('keeps at most maxTotalBytes per session: finished streams go first, then old events of live ones', () => {
    const log = new EventLog({ maxEvents: 100, maxBytes: 10_000, maxFinishedStreams: 10, maxTotalBytes: 3_000 });
    const chunk = `"${'z'.repeat(900)}"`;
    const done = log.open(1000).streamId;
    log.record(done, chunk);
    log.finish(done);
    const live = log.open(1000).streamId;
    log.record(live, chunk);
    log.record(live, chunk);
    assert.equal(log.after(`${done}_0`).kind, 'ok');
    log.record(live, chunk); // over 3,000 bytes: the finished stream goes
    assert.equal(log.after(`${done}_0`).kind, 'unknown');
    for (let i = 0; i < 5; i++) log.record(live, chunk); // then the oldest events of the live one
    assert.ok(log.heldBytes <= 3_000, String(log.heldBytes));
    const r = log.after(`${live}_0`);
    assert.deepEqual(r.kind === 'ok' && r.frames.map(idOf), ['s2_6', 's2_7', 's2_8']);
    assert.equal(log.heldBytes, r.kind === 'ok' ? r.frames.reduce((n, f) => n + Buffer.byteLength(f), 0) : -1);
  });
});
