import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BoundedOutput, completeUtf8Length, OutputEncoder, wireEvents } from '../../../src/sandboxes/output.js';
import type { CommandEvent } from '../../../src/schemas/commands.js';
import { buildEnv, resolveSandboxPath } from '../../../src/sandboxes/paths.js';
import { newSandboxId } from '../../../src/sandboxes/ids.js';
import { SANDBOX_ID_RE } from '../../../src/schemas/common.js';

describe('BoundedOutput', () => {
  it('keeps the first bytes up to its limit and flags the rest', () => {
    const b = new BoundedOutput(5);
    b.push(Buffer.from('abc'));
    assert.equal(b.truncated, false);
    b.push(Buffer.from('defgh'));
    b.push(Buffer.from('ijk'));
    assert.equal(b.encode('utf8'), 'abcde');
    assert.equal(b.truncated, true);
  });
  it('decodes invalid UTF-8 with replacement characters, and keeps exact bytes in base64', () => {
    const b = new BoundedOutput(100);
    b.push(Buffer.from([0x61, 0xff, 0x62]));
    assert.equal(b.encode('utf8'), 'a\uFFFDb');
    assert.deepEqual(Buffer.from(b.encode('base64'), 'base64'), Buffer.from([0x61, 0xff, 0x62]));
  });
  it('leaves out a character cut by the limit instead of replacing it', () => {
    const b = new BoundedOutput(4);
    b.push(Buffer.from('a€b')); // 61 e2 82 ac 62: the limit cuts after the euro sign
    assert.equal(b.encode('utf8'), 'a€');
    const c = new BoundedOutput(3);
    c.push(Buffer.from('a€'));
    assert.equal(c.encode('utf8'), 'a');
  });
});

describe('OutputEncoder and wireEvents', () => {
  const text = 'é€😀'.repeat(3000) + 'tail';
  const bytes = Buffer.from(text);
  /** Every way of cutting the bytes into pieces of `size` bytes. */
  function pieces(size: number): Buffer[] {
    const out: Buffer[] = [];
    for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, i + size));
    return out;
  }
  it('never splits a character across pieces (any chunk size)', () => {
    for (const size of [1, 2, 3, 5, 7, 4096, 65536]) {
      const enc = new OutputEncoder('utf8');
      let got = '';
      for (const p of pieces(size)) got += enc.chunk('stdout', p);
      got += enc.flush('stdout');
      assert.equal(got, text, `chunk size ${size}`);
      assert.ok(!got.includes('\uFFFD'));
    }
  });
  it('keeps one decoder per stream', () => {
    const enc = new OutputEncoder('utf8');
    const euro = Buffer.from('€');
    assert.equal(enc.chunk('stdout', euro.subarray(0, 1)), '');
    assert.equal(enc.chunk('stderr', Buffer.from('x')), 'x');
    assert.equal(enc.chunk('stdout', euro.subarray(1)), '€');
  });
  it('turns byte events into wire events: no empty pieces, flushed before exit, base64 tagged', () => {
    const events: CommandEvent[] = [];
    const write = wireEvents('utf8', (ev) => (events.push(ev), true));
    write({ type: 'start', pid: 3 });
    write({ type: 'stdout', data: Buffer.from([0xe2]) });
    write({ type: 'stdout', data: Buffer.from([0x82, 0xac, 0xe2]) });
    write({ type: 'exit', exitCode: 0 });
    assert.deepEqual(events, [
      { type: 'start', pid: 3 },
      { type: 'stdout', data: '€' },
      { type: 'stdout', data: '\uFFFD' },
      { type: 'exit', exitCode: 0 },
    ]);
    const b64: CommandEvent[] = [];
    const w2 = wireEvents('base64', (ev) => (b64.push(ev), true));
    w2({ type: 'stdout', data: Buffer.from([0, 0xff]) });
    assert.deepEqual(b64, [{ type: 'stdout', data: 'AP8=', encoding: 'base64' }]);
  });
  it('completeUtf8Length finds the last whole character', () => {
    assert.equal(completeUtf8Length(Buffer.from('ab')), 2);
    assert.equal(completeUtf8Length(Buffer.from('a€')), 4);
    assert.equal(completeUtf8Length(Buffer.from('a€').subarray(0, 3)), 1);
    assert.equal(completeUtf8Length(Buffer.from('😀').subarray(0, 3)), 0);
    assert.equal(completeUtf8Length(Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80])), 5);
  });
});

describe('paths and env', () => {
  it('normalises sandbox paths lexically to absolute ones', () => {
    assert.equal(resolveSandboxPath('a/b'), '/a/b');
    assert.equal(resolveSandboxPath('/../../etc/shadow'), '/etc/shadow');
    assert.equal(resolveSandboxPath('/x/./y/../z'), '/x/z');
  });
  it('layers defaults, sandbox envs and command envs', () => {
    const e = buildEnv({ A: 'sb', B: 'sb' }, { B: 'cmd' }, undefined);
    assert.equal(e.A, 'sb');
    assert.equal(e.B, 'cmd');
    assert.equal(e.HOME, '/root');
    assert.ok(e.PATH!.includes('/usr/bin'));
    assert.equal(buildEnv({}, undefined, 'user').HOME, '/home/user');
    // The shell string commands run in, and the login name, as a login would set them; both overridable.
    assert.equal(e.SHELL, '/bin/sh');
    assert.equal(buildEnv({}, undefined, 'user').LOGNAME, 'user');
    assert.equal(buildEnv({}, { SHELL: '/bin/bash' }, undefined).SHELL, '/bin/bash');
  });
  it('makes ids that match the public id pattern', () => {
    const ids = new Set(Array.from({ length: 1000 }, newSandboxId));
    assert.equal(ids.size, 1000);
    for (const id of ids) assert.match(id, SANDBOX_ID_RE);
  });
});
