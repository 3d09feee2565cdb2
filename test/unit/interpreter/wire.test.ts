/** What a driver sends is hostile: the line splitter and result conversion bound and check it. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LineSplitter, parseEvent, toCodeResult, toExecutionError } from '../../../src/interpreter/wire.js';
import { CODE_LIMITS } from '../../../src/schemas/code.js';

const PNG = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(32)]).toString('base64');

describe('interpreter wire', () => {
  it('splits lines across chunks and drops an oversized line whole, then resynchronises', () => {
    const lines: string[] = [];
    let oversized = 0;
    const s = new LineSplitter((l) => lines.push(l.toString()), () => oversized++, 10);
    s.push(Buffer.from('{"a"'));
    s.push(Buffer.from(':1}\n0123456789abc'));
    s.push(Buffer.from('def\n{"b":2}\n'));
    assert.deepEqual(lines, ['{"a":1}', '{"b":2}']);
    assert.equal(oversized, 1);
  });

  it('takes only events of the known shapes', () => {
    assert.equal(parseEvent(Buffer.from('not json')), undefined);
    assert.equal(parseEvent(Buffer.from('{"t":"result","id":"r1"}')), undefined, 'a result needs data');
    assert.equal(parseEvent(Buffer.from('{"t":"shell","cmd":"rm -rf /"}')), undefined);
    assert.deepEqual(parseEvent(Buffer.from('{"t":"stdout","id":"r1","text":"x"}')), { t: 'stdout', id: 'r1', text: 'x' });
  });

  it('keeps known mime types only, and images only when their bytes say so', () => {
    const r = toCodeResult({ 'text/plain': 'fig', 'image/png': PNG, 'application/x-evil': 'x' }, false);
    assert.deepEqual(r?.formats, ['text/plain', 'image/png']);
    const fake = toCodeResult({ 'text/plain': 'fig', 'image/png': Buffer.from('<html>').toString('base64'), 'image/jpeg': PNG }, false);
    assert.deepEqual(fake?.formats, ['text/plain']);
    assert.equal(toCodeResult({ 'image/png': 'not base64 at all!' }, true), undefined);
    assert.deepEqual(toCodeResult({ 'application/json': { a: [1] } }, true)?.json, { a: [1] });
  });

  it('refuses a result larger than one result may be', () => {
    const big = 'x'.repeat(CODE_LIMITS.maxResultBytes + 1);
    assert.equal(toCodeResult({ 'text/html': big }, true), undefined);
  });

  it('cuts tracebacks to their limits', () => {
    const e = toExecutionError({ name: 'E', value: 'v', traceback: Array.from({ length: CODE_LIMITS.maxTracebackLines + 5 }, () => 'y'.repeat(CODE_LIMITS.maxTracebackLine + 10)) });
    assert.equal(e.traceback.length, CODE_LIMITS.maxTracebackLines + 1);
    assert.ok(e.traceback[0]!.length <= CODE_LIMITS.maxTracebackLine + 1);
    assert.match(e.traceback.at(-1)!, /5 more lines/);
  });
});
