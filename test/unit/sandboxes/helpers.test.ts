import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BoundedOutput } from '../../../src/sandboxes/output-buffer.js';
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
    assert.equal(b.text(), 'abcde');
    assert.equal(b.truncated, true);
  });
  it('decodes invalid UTF-8 with replacement characters', () => {
    const b = new BoundedOutput(100);
    b.push(Buffer.from([0x61, 0xff, 0x62]));
    assert.equal(b.text(), 'a\uFFFDb');
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
  });
  it('makes ids that match the public id pattern', () => {
    const ids = new Set(Array.from({ length: 1000 }, newSandboxId));
    assert.equal(ids.size, 1000);
    for (const id of ids) assert.match(id, SANDBOX_ID_RE);
  });
});
