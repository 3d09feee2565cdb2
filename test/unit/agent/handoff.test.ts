/**
 * The file handoff (protocol 1.4, `file-handoff`) with the real agent: the agent offers an upload's temp
 * file, the daemon's side fills it through its own descriptor (file-fill.ts), and the agent checks the
 * size it is told before it renames the file into place. Every way of declining falls back to DATA.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';

import { DIRECT_FILL, fillFile, type Fill } from '../../../src/agent/file-fill.js';
import { HANDOFF_MIN_BYTES } from '../../../src/agent/file-write.js';
import type { AgentConnection, FileHandoff } from '../../../src/agent/types.js';
import { isCapsuleError } from '../../../src/errors/index.js';
import { startAgentWithRoot, stopAgentWithRoot, type RunningAgent } from './helpers.js';

/**
 * Bytes the agent process has written with write(2) and friends so far (/proc/<pid>/io wchar): its file
 * writes count, its socket sends (send(2)) do not.
 */
function agentWrittenBytes(pid: number): number {
  return Number(/^wchar:\s*(\d+)$/m.exec(fs.readFileSync(`/proc/${pid}/io`, 'utf8'))![1]);
}

describe('file handoff', () => {
  let agent: RunningAgent;
  let conn: AgentConnection;
  let root: string;
  /** The daemon side's opener, as the runtime would do it here (no sandbox: the agent runs on the host). */
  const calls: Array<{ fd: number; ino: bigint }> = [];
  const opener: FileHandoff = async (fd, ino) => {
    calls.push({ fd, ino });
    const own = fs.openSync(`/proc/${agent.child.pid}/fd/${fd}`, 'r+');
    assert.equal(fs.fstatSync(own, { bigint: true }).ino, ino, 'the inode the agent announced');
    return own;
  };

  before(async () => {
    ({ agent, conn, root } = await startAgentWithRoot());
  });
  after(() => stopAgentWithRoot({ agent, conn, root }));

  it('is negotiated with this agent', () => {
    assert.ok(conn.supports('file-handoff'));
  });

  it('fills a streamed upload through the offered descriptor: the agent reads none of its bytes', async () => {
    const data = randomBytes(20 << 20);
    const file = path.join(root, 'streamed.bin');
    const before = agentWrittenBytes(agent.child.pid!);
    calls.length = 0;
    const res = await conn.writeFile(file, Readable.from([data.subarray(0, 7 << 20), data.subarray(7 << 20)]), { mode: 0o640, handoff: opener });
    assert.deepEqual(res, { size: data.length });
    assert.equal(calls.length, 1);
    assert.ok(agentWrittenBytes(agent.child.pid!) - before < 64 * 1024, 'the agent wrote none of the bytes itself');
    assert.ok(fs.readFileSync(file).equals(data));
    assert.equal(fs.statSync(file).mode & 0o7777, 0o640);
    assert.deepEqual(fs.readdirSync(root).filter((n) => n.startsWith('.capsule-write')), [], 'no temp file left');
  });

  it('offers a buffer of HANDOFF_MIN_BYTES or more, and never a smaller one', async () => {
    calls.length = 0;
    const big = randomBytes(HANDOFF_MIN_BYTES);
    await conn.writeFile(path.join(root, 'big.bin'), big, { handoff: opener });
    assert.equal(calls.length, 1);
    assert.ok(fs.readFileSync(path.join(root, 'big.bin')).equals(big));
    const small = randomBytes(HANDOFF_MIN_BYTES - 1);
    await conn.writeFile(path.join(root, 'small.bin'), small, { handoff: opener });
    assert.equal(calls.length, 1, 'no offer for a small buffer');
    assert.ok(fs.readFileSync(path.join(root, 'small.bin')).equals(small));
  });

  it('relays as data when the opener declines or fails, with the same result', async () => {
    const data = randomBytes(3 << 20);
    for (const decline of [async () => undefined, async () => Promise.reject(new Error('no /proc here'))] as FileHandoff[]) {
      const file = path.join(root, 'declined.bin');
      const before = agentWrittenBytes(agent.child.pid!);
      assert.deepEqual(await conn.writeFile(file, Readable.from([data]), { handoff: decline }), { size: data.length });
      assert.ok(agentWrittenBytes(agent.child.pid!) - before >= data.length, 'the agent wrote the bytes itself');
      assert.ok(fs.readFileSync(file).equals(data));
    }
  });

  it('refuses the upload when the file does not hold what the daemon says it wrote, and leaves nothing', async () => {
    const file = path.join(root, 'tampered.bin');
    const tamper: FileHandoff = async (fd, ino) => {
      const own = await opener(fd, ino);
      // Something else in the sandbox wrote into the temp file meanwhile.
      fs.writeSync(fs.openSync(`/proc/${agent.child.pid}/fd/${fd}`, 'r+'), 'extra', (2 << 20) + 100);
      return own;
    };
    const data = randomBytes(2 << 20);
    await assert.rejects(conn.writeFile(file, Readable.from([data]), { handoff: tamper }), (e: unknown) => {
      assert.ok(isCapsuleError(e));
      assert.match((e as Error).message, /holds \d+ bytes, \d+ were sent/);
      return true;
    });
    assert.equal(fs.existsSync(file), false);
    assert.deepEqual(fs.readdirSync(root).filter((n) => n.startsWith('.capsule-write')), [], 'the temp file is removed');
  });

  it('an upload cut off during the fill fails, and the temp file is removed', async () => {
    const file = path.join(root, 'cut.bin');
    const src = new Readable({ read() {} });
    const p = conn.writeFile(file, src, { handoff: opener });
    src.push(randomBytes(1 << 20));
    setTimeout(() => src.destroy(new Error('client went away')), 50);
    await assert.rejects(p, /client went away|cut off/);
    // The agent removes its temp file when the channel closes.
    for (let i = 0; i < 50 && fs.readdirSync(root).some((n) => n.startsWith('.capsule-write')); i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(fs.readdirSync(root).filter((n) => n.startsWith('.capsule-write')), []);
    assert.equal(fs.existsSync(file), false);
  });
});

describe('fillFile', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join('/var/tmp', 'capsule-fill-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('writes a stream in order, whatever its chunking', async () => {
    const parts = Array.from({ length: 300 }, (_, i) => randomBytes(1 + ((i * 7919) % 70_000)));
    const file = path.join(dir, 'ordered.bin');
    const n = await fillFile(fs.openSync(file, 'w'), Readable.from(parts), file).done;
    const whole = Buffer.concat(parts);
    assert.equal(n, whole.length);
    assert.equal(createHash('sha256').update(fs.readFileSync(file)).digest('hex'), createHash('sha256').update(whole).digest('hex'));
  });

  it('says a full disk as the agent would (ENOSPC, with the path), and closes its descriptor', async () => {
    const fd = fs.openSync('/dev/full', 'w');
    await assert.rejects(fillFile(fd, randomBytes(1 << 20), '/tmp/x.bin').done, (e: unknown) => {
      assert.ok(isCapsuleError(e));
      assert.equal((e as { details?: { errno?: string } }).details?.errno, 'ENOSPC');
      assert.match((e as Error).message, /^write \/tmp\/x\.bin: no space left on device/);
      return true;
    });
    await new Promise((r) => setTimeout(r, 20));
    assert.throws(() => fs.fstatSync(fd), /EBADF/, 'the descriptor was closed');
  });

  it('lets a source that can fill the descriptor itself do so', async () => {
    const file = path.join(dir, 'direct.bin');
    let asked: { fd: number; path: string } | undefined;
    const src = Object.assign(Readable.from([Buffer.from('never read as a stream')]), {
      [DIRECT_FILL](fd: number, p: string): Fill {
        asked = { fd, path: p };
        fs.writeSync(fd, 'filled directly');
        fs.closeSync(fd);
        return { done: Promise.resolve(15), cancel: () => undefined };
      },
    });
    assert.equal(await fillFile(fs.openSync(file, 'w'), src, '/in/sandbox.bin').done, 15);
    assert.equal(asked?.path, '/in/sandbox.bin');
    assert.equal(fs.readFileSync(file, 'utf8'), 'filled directly');
  });
});
