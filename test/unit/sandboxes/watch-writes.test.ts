import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { WatchEvent } from '../../../src/agent/types.js';
import { hideAgentWrites } from '../../../src/sandboxes/watch-writes.js';

describe('hideAgentWrites', () => {
  it("drops the files API's temporary file and reports the rename's target as create + write", () => {
    const f = hideAgentWrites();
    const ev = (type: WatchEvent['type'], path: string) => f({ type, path, isDir: false }).map((e) => `${e.type} ${e.path}`);
    assert.deepEqual(ev('create', 'd/.capsule-write-12-1'), []);
    assert.deepEqual(ev('write', 'd/.capsule-write-12-1'), []);
    assert.deepEqual(ev('rename', 'd/.capsule-write-12-1'), []);
    assert.deepEqual(ev('create', 'd/f.txt'), ['create d/f.txt', 'write d/f.txt']);
    assert.deepEqual(ev('create', 'd/g.txt'), ['create d/g.txt'], 'only the create that follows a temporary file');
    assert.deepEqual(ev('remove', '.capsule-write-notes'), ['remove .capsule-write-notes'], "a user's own file of a similar name");
  });

  it('matches two writes in flight in one directory, keeps directories apart, and forgets on overflow', () => {
    const f = hideAgentWrites();
    const ev = (type: WatchEvent['type'], path: string) => f({ type, path, isDir: false }).map((e) => `${e.type} ${e.path}`);
    ev('rename', '.capsule-write-1-1');
    ev('rename', '.capsule-write-1-2');
    ev('rename', 'x/.capsule-write-1-3');
    assert.deepEqual(ev('create', 'a'), ['create a', 'write a']);
    assert.deepEqual(ev('create', 'b'), ['create b', 'write b']);
    assert.deepEqual(ev('create', 'c'), ['create c']);
    assert.deepEqual(ev('create', 'x/y'), ['create x/y', 'write x/y']);
    ev('rename', '.capsule-write-1-4');
    assert.deepEqual(ev('overflow', ''), ['overflow ']);
    assert.deepEqual(ev('create', 'd'), ['create d']);
  });
});
