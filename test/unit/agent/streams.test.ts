/**
 * A variable set of streams per process (protocol 1.1, exec-streams): an EXEC
 * may list its streams, each a pipe to or from the daemon or /dev/null bound
 * to any of the child's fds 0-9, with ids beyond 2. PTY streams (pty.test.ts) are
 * refused where that feature is not in effect; CONTROL frames of unknown kinds are ignored.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';

import { connectAgent } from '../../../src/agent/client.js';
import { encodeFrame, FrameDecoder, FT, PayloadReader, PayloadWriter, type Frame } from '../../../src/agent/frames.js';
import { encodeHello } from '../../../src/agent/protocol.js';
import type { AgentConnection, AgentProcess } from '../../../src/agent/types.js';
import { InvalidArgumentError, SandboxError } from '../../../src/errors/index.js';
import { startAgent, type RunningAgent } from './helpers.js';

const ENV = { PATH: '/usr/local/bin:/usr/bin:/bin' };

function byStream(p: AgentProcess): Map<number, string> {
  const out = new Map<number, string>();
  p.on('data', (s, chunk) => out.set(s, (out.get(s) ?? '') + chunk.toString('utf8')));
  return out;
}

describe('agent process streams', () => {
  let agent: RunningAgent;
  let conn: AgentConnection;

  before(async () => {
    agent = await startAgent();
    conn = await connectAgent(agent.socketPath, { timeoutMs: 3000 });
  });
  after(async () => {
    conn.close();
    await agent.stop();
  });

  it('carries an extra output stream on fd 3; fds 0-2 without a stream are /dev/null', async () => {
    const p = await conn.exec({
      argv: ['sh', '-c', 'echo out; echo three >&3; echo err >&2; read x; echo "stdin=[$x]"'],
      env: ENV,
      stdin: true, // ignored: the table decides
      streams: [
        { id: 1, kind: 'pipe-out', fds: [1] },
        { id: 7, kind: 'pipe-out', fds: [3] },
      ],
    });
    const out = byStream(p);
    assert.deepEqual(await p.exited, { exitCode: 0 });
    assert.equal(out.get(1), 'out\nstdin=[]\n');
    assert.equal(out.get(7), 'three\n');
    assert.equal(out.has(2), false);
    assert.deepEqual(p.streams, [{ id: 1, kind: 'pipe-out' }, { id: 7, kind: 'pipe-out' }]);
  });

  it('merges stdout and stderr into one stream, in order', async () => {
    const p = await conn.exec({
      argv: ['sh', '-c', 'for i in 1 2 3 4 5; do echo o$i; echo e$i >&2; done'],
      env: ENV,
      stdin: false,
      streams: [{ id: 1, kind: 'pipe-out', fds: [1, 2] }],
    });
    let stdout = '';
    p.on('stdout', (c) => (stdout += c.toString()));
    assert.equal((await p.exited).exitCode, 0);
    assert.equal(stdout, 'o1\ne1\no2\ne2\no3\ne3\no4\ne4\no5\ne5\n');
  });

  it('feeds an input stream with any id, and ends it', async () => {
    const p = await conn.exec({
      argv: ['sh', '-c', 'cat; cat <&5 >&2'],
      env: ENV,
      stdin: false,
      streams: [
        { id: 40, kind: 'pipe-in', fds: [0] },
        { id: 41, kind: 'pipe-in', fds: [5] },
        { id: 1, kind: 'pipe-out', fds: [1] },
        { id: 2, kind: 'pipe-out', fds: [2] },
      ],
    });
    const out = byStream(p);
    await p.writeStream(41, Buffer.from('second\n'));
    await p.closeStream(41);
    await p.writeStream(40, Buffer.alloc(200_000, 0x61));
    await p.closeStream(40);
    assert.equal((await p.exited).exitCode, 0);
    assert.equal(out.get(1)!.length, 200_000);
    assert.equal(out.get(2), 'second\n');
    await assert.rejects(p.writeStream(1, Buffer.from('x')), InvalidArgumentError);
  });

  it('binds streams to fds 3-9 even where the agent has its own fds', async () => {
    // Every fd 3-9 a target. In a fresh agent with one connection the first pipe is made on fds 8 and 9,
    // so its child end already sits on a target fd (here its own): the child must move its sources first.
    const fresh = await startAgent();
    const conn = await connectAgent(fresh.socketPath, { timeoutMs: 3000 });
    try {
      const fds = [9, 8, 7, 6, 5, 4, 3];
      const p = await conn.exec({
        argv: ['sh', '-c', fds.map((fd) => `echo fd${fd} >&${fd}`).join('; ')],
        env: ENV,
        stdin: false,
        streams: fds.map((fd) => ({ id: 10 + fd, kind: 'pipe-out' as const, fds: [fd] })),
      });
      const out = byStream(p);
      assert.equal((await p.exited).exitCode, 0);
      for (const fd of fds) assert.equal(out.get(10 + fd), `fd${fd}\n`);
    } finally {
      conn.close();
      await fresh.stop();
    }
  });

  it('a null stream discards output written on its fds', async () => {
    const p = await conn.exec({
      argv: ['sh', '-c', 'echo gone; echo kept >&2'],
      env: ENV,
      stdin: false,
      streams: [
        { id: 1, kind: 'null', fds: [1] },
        { id: 2, kind: 'pipe-out', fds: [2] },
      ],
    });
    const out = byStream(p);
    assert.equal((await p.exited).exitCode, 0);
    assert.deepEqual([...out], [[2, 'kept\n']]);
  });

  it('refuses pty streams where the feature is not in effect, two terminals, and malformed tables', async () => {
    const noPty = await connectAgent(agent.socketPath, { timeoutMs: 3000, offer: ['exec-streams', 'large-data', 'read-to-size'] });
    await assert.rejects(
      noPty.exec({ argv: ['true'], env: ENV, stdin: false, streams: [{ id: 3, kind: 'pty', fds: [0, 1, 2] }] }),
      (e: unknown) => e instanceof SandboxError && /does not support pty/.test(e.message),
    );
    noPty.close();
    await assert.rejects(
      conn.exec({ argv: ['true'], env: ENV, stdin: false, streams: [{ id: 1, kind: 'pty', fds: [0] }, { id: 2, kind: 'pty', fds: [1] }] }),
      InvalidArgumentError,
    );
    const bad: Array<[string, Parameters<AgentConnection['exec']>[0]['streams']]> = [
      ['empty', []],
      ['too many', Array.from({ length: 9 }, (_, i) => ({ id: i, kind: 'pipe-out' as const, fds: [i] }))],
      ['duplicate id', [{ id: 1, kind: 'pipe-out', fds: [1] }, { id: 1, kind: 'pipe-out', fds: [2] }]],
      ['fd twice', [{ id: 1, kind: 'pipe-out', fds: [1] }, { id: 2, kind: 'pipe-out', fds: [1] }]],
      ['fd 10', [{ id: 1, kind: 'pipe-out', fds: [10] }]],
      ['id 255', [{ id: 255, kind: 'pipe-out', fds: [1] }]],
      ['no fds', [{ id: 1, kind: 'pipe-out', fds: [] }]],
    ];
    for (const [what, streams] of bad) {
      await assert.rejects(conn.exec({ argv: ['true'], env: ENV, stdin: false, streams: streams! }), InvalidArgumentError, what);
    }
    // the connection is still fine
    assert.match((await conn.ping()).version, /capsule-agent/);
  });

  it('the agent itself checks tables (a daemon could send anything)', async () => {
    const sock = net.connect(agent.socketPath);
    const dec = new FrameDecoder();
    const frames: Frame[] = [];
    let wake: () => void = () => undefined;
    sock.on('data', (c: Buffer) => {
      frames.push(...dec.push(c));
      wake();
    });
    const next = async (): Promise<Frame> => {
      while (!frames.length) await new Promise<void>((r) => (wake = r));
      return frames.shift()!;
    };
    sock.write(encodeFrame(0, FT.HELLO, 0, encodeHello(['exec-streams'])));
    await next();
    const exec = (ch: number, table: number[]) => {
      const w = new PayloadWriter().u8(4).bytes('').bytes('').u32(1).bytes('true').u32(0);
      sock.write(encodeFrame(ch, FT.EXEC, 0, Buffer.concat([w.finish(), Buffer.from(table)])));
    };
    const errno = (f: Frame) => new PayloadReader(f.payload, 'ERROR').bytes(64).toString();
    exec(1, [2, 1, 2, 1, 1, 2, 2, 1, 1]); // fd 1 in two streams
    let f = await next();
    assert.deepEqual([f.channel, f.type, errno(f)], [1, FT.ERROR, 'EINVAL']);
    exec(2, [1, 1, 2, 1, 12]); // fd 12
    f = await next();
    assert.deepEqual([f.channel, f.type, errno(f)], [2, FT.ERROR, 'EINVAL']);
    exec(3, [1, 1, 9, 1, 1]); // unknown kind
    f = await next();
    assert.deepEqual([f.channel, f.type, errno(f)], [3, FT.ERROR, 'EINVAL']);
    // A CONTROL frame (resize) on a running process is accepted and ignored.
    const w = new PayloadWriter().u8(4).bytes('').bytes('').u32(3).bytes('sh').bytes('-c').bytes('read x; echo "$x"').u32(1).bytes(`PATH=${ENV.PATH}`);
    sock.write(encodeFrame(4, FT.EXEC, 0, Buffer.concat([w.finish(), Buffer.from([2, 0, 1, 1, 0, 1, 2, 1, 1])])));
    f = await next();
    assert.deepEqual([f.channel, f.type], [4, FT.OK]);
    sock.write(encodeFrame(4, FT.CONTROL, 0, new PayloadWriter().u8(1).u32(0x00180050).finish()));
    sock.write(encodeFrame(4, FT.DATA, 0, Buffer.from('hi\n')));
    const seen: Frame[] = [];
    while (!seen.some((x) => x.type === FT.EXIT)) seen.push(await next());
    assert.equal(seen.filter((x) => x.type === FT.DATA).map((x) => x.payload.toString()).join(''), 'hi\n');
    // a truncated table is a malformed request: the connection closes
    exec(5, [2, 1, 2]);
    await new Promise<void>((r) => sock.once('close', () => r()));
  });

  it('ATTACH reports the stream table of a process started elsewhere', async () => {
    const p = await conn.exec({
      argv: ['sh', '-c', 'read x; echo "got $x" >&4'],
      env: ENV,
      stdin: false,
      streams: [
        { id: 9, kind: 'pipe-in', fds: [0] },
        { id: 4, kind: 'pipe-out', fds: [4] },
      ],
    });
    const other = await connectAgent(agent.socketPath, { timeoutMs: 3000 });
    try {
      const q = await other.attach(p.pid);
      assert.deepEqual(q.streams, [{ id: 9, kind: 'pipe-in' }, { id: 4, kind: 'pipe-out' }]);
      const out = byStream(q);
      await q.writeStream(9, Buffer.from('it\n'));
      assert.equal((await q.exited).exitCode, 0);
      assert.equal(out.get(4), 'got it\n');
      // A 1.0 daemon attaching sees the classic layout (the table is not sent without the feature).
      const old = await connectAgent(agent.socketPath, { timeoutMs: 3000, offer: [] });
      const r = await old.exec({ argv: ['sleep', '5'], env: ENV, stdin: true });
      const other2 = await connectAgent(agent.socketPath, { timeoutMs: 3000, offer: [] });
      const a = await other2.attach(r.pid);
      assert.deepEqual(a.streams, [{ id: 0, kind: 'pipe-in' }, { id: 1, kind: 'pipe-out' }, { id: 2, kind: 'pipe-out' }]);
      await a.signal('SIGKILL');
      await a.exited;
      old.close();
      other2.close();
    } finally {
      other.close();
    }
  });
});
