/**
 * schemas/fast.ts must never disagree with the zod schemas it stands in front of: whatever it accepts,
 * the schema accepts and parses to the same value (same keys in the same order), and what it declines
 * is left to the schema. Checked on hand-picked edge cases and on generated inputs.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ChannelClientMessage, ChannelServerMessage, CommandResult, LIMITS, RunCommandRequest, SandboxParams } from '../../../src/schemas/index.js';
import { fastChannelAnswer, fastChannelRun, fastCommandResult, fastRunCommandRequest, fastSandboxParams } from '../../../src/schemas/fast.js';
import type { z } from 'zod';

/** fast(v) is undefined, or exactly what schema.parse(v) returns (JSON text compared too: key order). */
function agrees(schema: z.ZodType, fast: (v: unknown) => unknown, v: unknown): boolean {
  const got = fast(v);
  if (got === undefined) return false;
  const want = schema.safeParse(v);
  assert.ok(want.success, `fast path accepted what the schema refuses: ${JSON.stringify(v)}`);
  assert.deepStrictEqual(got, want.data);
  assert.equal(JSON.stringify(got), JSON.stringify(want.data));
  return true;
}

const anyValue = fc.oneof(fc.constant(undefined), fc.constant(null), fc.boolean(), fc.integer(), fc.double(), fc.string(), fc.constant(2 ** 53), fc.constant(-1));

describe('schemas/fast', () => {
  it('CommandResult: the common results take the fast path and equal the parse', () => {
    const base = { pid: 42, exitCode: 0, stdout: 'hi\n', stderr: '' };
    assert.ok(agrees(CommandResult, fastCommandResult, base));
    assert.ok(agrees(CommandResult, fastCommandResult, { stderr: 'x', stdout: 'y', exitCode: 137, pid: 7, signal: 'SIGKILL', timedOut: true, oomKilled: false }));
    assert.ok(agrees(CommandResult, fastCommandResult, { ...base, encoding: 'base64', stdoutTruncated: true, stderrTruncated: false }));
    // Declined, left to the schema: unknown keys (the schema strips them), wrong types, unsafe integers.
    for (const v of [{ ...base, extra: 1 }, { ...base, pid: 1.5 }, { ...base, pid: 2 ** 53 }, { ...base, encoding: 'utf8' }, { ...base, timedOut: 'yes' }, [base], null, 'x']) {
      assert.equal(fastCommandResult(v), undefined, JSON.stringify(v));
    }
  });

  it('CommandResult and channel answers: generated inputs never disagree with the schema', () => {
    const keys = ['pid', 'exitCode', 'signal', 'stdout', 'stderr', 'encoding', 'stdoutTruncated', 'stderrTruncated', 'timedOut', 'oomKilled', 'other'];
    const field = fc.oneof(anyValue, fc.constant('base64'), fc.constant('SIGTERM'));
    const result = fc.dictionary(fc.constantFrom(...keys), field, { maxKeys: 11 });
    const valid = fc.record(
      { pid: fc.integer(), exitCode: fc.integer(), stdout: fc.string(), stderr: fc.string(), signal: fc.string(), encoding: fc.constant('base64'), timedOut: fc.boolean(), oomKilled: fc.boolean(), stdoutTruncated: fc.boolean(), stderrTruncated: fc.boolean() },
      { requiredKeys: ['pid', 'exitCode', 'stdout', 'stderr'] },
    );
    let fast = 0;
    fc.assert(
      fc.property(fc.oneof(result, valid), fc.oneof(fc.integer({ min: -2, max: 2 ** 40 }), fc.constant(1.5)), fc.boolean(), (r, id, extra) => {
        if (agrees(CommandResult, fastCommandResult, r)) fast++;
        agrees(ChannelServerMessage, fastChannelAnswer, extra ? { id, result: r, error: 1 } : { id, result: r });
        // Through JSON, as on the wire.
        agrees(ChannelServerMessage, fastChannelAnswer, JSON.parse(JSON.stringify({ id, result: r })));
      }),
      { numRuns: 3000 },
    );
    assert.ok(fast > 100, `the fast path took ${fast} generated results`);
  });

  it('channel run messages and RunCommandRequest: common shapes fast, the rest left to the schema', () => {
    const run = { op: 'run', id: 3, sandboxId: 'sbx-abcdefghijkl', body: { cmd: ['true'] } };
    assert.ok(agrees(ChannelClientMessage, fastChannelRun, run));
    assert.ok(agrees(RunCommandRequest, fastRunCommandRequest, run.body));
    assert.ok(agrees(RunCommandRequest, fastRunCommandRequest, { cmd: 'echo hi' }));
    assert.ok(agrees(SandboxParams, (v) => fastSandboxParams((v as { id: unknown }).id), { id: run.sandboxId }));
    for (const v of [{ ...run, extra: 1 }, { ...run, op: 'cancel' }, { ...run, id: -1 }, { ...run, id: 0.5 }, { op: 'run', id: 1, sandboxId: 'x' }]) {
      assert.equal(fastChannelRun(v), undefined, JSON.stringify(v));
    }
    const declined = [
      { cmd: [] },
      { cmd: '' },
      { cmd: ['a\0b'] },
      { cmd: 'a\0' },
      { cmd: ['x'.repeat(LIMITS.maxArg + 1)] },
      { cmd: Array.from({ length: LIMITS.maxArgs + 1 }, () => 'a') },
      { cmd: ['true'], timeoutMs: 5 },
      { cmd: ['true'], background: true },
      { cmd: [1] },
      {},
    ];
    for (const v of declined) assert.equal(fastRunCommandRequest(v), undefined);
    assert.ok(agrees(RunCommandRequest, fastRunCommandRequest, { cmd: ['x'.repeat(LIMITS.maxArg)] }));
    assert.equal(fastSandboxParams('sbx-ABC'), undefined);
    fc.assert(
      fc.property(
        fc.oneof(fc.string(), fc.array(fc.oneof(fc.string(), fc.constant('a\0'), fc.integer()), { maxLength: 5 }), anyValue),
        fc.constantFrom('cmd', 'cwd', 'stdin'),
        fc.oneof(fc.integer(), fc.constantFrom('run', 'cancel')),
        (cmd, key, id) => {
          agrees(RunCommandRequest, fastRunCommandRequest, { [key]: cmd });
          agrees(ChannelClientMessage, fastChannelRun, { op: 'run', id, sandboxId: 'sbx-000000000000', body: { cmd } });
          agrees(ChannelClientMessage, fastChannelRun, { op: id, id: 1, sandboxId: 'sbx-000000000000', body: null });
        },
      ),
      { numRuns: 2000 },
    );
  });
});
