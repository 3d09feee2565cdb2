/**
 * The file handoff's checks (src/runtime/agent-file.ts), against a real process holding real descriptors:
 * the daemon writes as host root, so it may open only the fresh upload file the agent names, on the
 * agent's own root mount, and nothing else a hostile agent could point it at.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { openAgentFile } from '../../../src/runtime/agent-file.js';

/** A process whose descriptors 0, 1 and 2 are the given ones (it sleeps; the test reads its /proc). */
function holder(fds: [number | 'ignore', number, number | 'ignore']): ChildProcess {
  return spawn('sleep', ['60'], { stdio: fds });
}

describe('openAgentFile (file handoff checks)', () => {
  let dir: string;
  const kids: ChildProcess[] = [];
  before(() => {
    // On the root mount (/var/tmp, not a tmpfs /tmp), as a sandbox's upload file is on its root.
    dir = fs.mkdtempSync(path.join('/var/tmp', 'capsule-handoff-'));
  });
  after(() => {
    for (const k of kids) k.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function hold(file: string, opts: { mount?: string } = {}): { pid: number; ino: bigint; path: string } {
    const p = path.join(opts.mount ?? dir, file);
    const fd = fs.openSync(p, 'w');
    const kid = holder(['ignore', fd, 'ignore']);
    kids.push(kid);
    fs.closeSync(fd);
    return { pid: kid.pid!, ino: fs.statSync(p, { bigint: true }).ino, path: p };
  }

  it('opens the empty regular file a process holds, for writing, when every check passes', () => {
    const h = hold('fresh.bin');
    const fd = openAgentFile(h.pid, 1, h.ino, '/');
    assert.equal(typeof fd, 'number', String(fd));
    fs.writeSync(fd as number, 'written through the handoff');
    fs.closeSync(fd as number);
    assert.equal(fs.readFileSync(h.path, 'utf8'), 'written through the handoff');
  });

  it('declines another inode than the one announced (a pid reused, or an agent that lies)', () => {
    const h = hold('other.bin');
    const r = openAgentFile(h.pid, 1, h.ino + 1n, '/');
    assert.equal(typeof r, 'string');
    assert.match(r as string, /inode/);
  });

  it('declines a file that already has data or a second name', () => {
    const h = hold('used.bin');
    fs.writeFileSync(h.path, 'x');
    assert.match(openAgentFile(h.pid, 1, h.ino, '/') as string, /not a fresh file/);
    const g = hold('linked.bin');
    fs.linkSync(g.path, path.join(dir, 'linked-again.bin'));
    assert.match(openAgentFile(g.pid, 1, g.ino, '/') as string, /not a fresh file/);
  });

  it('declines what is not a regular file (a device), without opening it for writing', () => {
    const null0 = fs.openSync('/dev/null', 'r');
    const kid = holder([null0, fs.openSync(path.join(dir, 'x.bin'), 'w'), 'ignore']);
    kids.push(kid);
    const ino = fs.statSync('/dev/null', { bigint: true }).ino;
    assert.match(openAgentFile(kid.pid!, 0, ino, '/') as string, /not a regular file/);
  });

  it("declines a file on another mount than the process's root (a volume, a tmpfs)", (t) => {
    const shm = '/dev/shm';
    if (!fs.existsSync(shm) || fs.statSync(shm).dev === fs.statSync('/').dev) return t.skip('no separate /dev/shm here');
    const shmDir = fs.mkdtempSync(path.join(shm, 'capsule-handoff-'));
    try {
      const h = hold('on-tmpfs.bin', { mount: shmDir });
      assert.match(openAgentFile(h.pid, 1, h.ino, '/') as string, /root mount/);
    } finally {
      fs.rmSync(shmDir, { recursive: true, force: true });
    }
  });

  it("declines a process whose root is not the sandbox's root filesystem", () => {
    const h = hold('elsewhere.bin');
    assert.match(openAgentFile(h.pid, 1, h.ino, os.tmpdir()) as string, /not rooted in/);
  });

  it('declines impossible pids and descriptors, and ones that do not exist', () => {
    const h = hold('gone.bin');
    assert.match(openAgentFile(0, 1, h.ino, '/') as string, /no agent process/);
    assert.match(openAgentFile(1, 1, h.ino, '/') as string, /no agent process/);
    assert.match(openAgentFile(h.pid, -1, h.ino, '/') as string, /out of range/);
    assert.match(openAgentFile(h.pid, 1.5, h.ino, '/') as string, /out of range/);
    assert.match(openAgentFile(h.pid, 977, h.ino, '/') as string, /cannot open descriptor 977/);
    assert.match(openAgentFile(2 ** 22 + 7, 1, h.ino, '/') as string, /cannot open|not rooted/);
  });
});
