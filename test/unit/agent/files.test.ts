import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';

import { connectAgent, READ_WINDOW, READ_WINDOW_LARGE } from '../../../src/agent/client.js';
import { encodeFrame, FrameDecoder, FT, PayloadReader, PayloadWriter, PROTO_VERSION } from '../../../src/agent/frames.js';
import type { AgentConnection } from '../../../src/agent/types.js';
import { collect, startAgent, startAgentWithRoot, stopAgentWithRoot, type RunningAgent } from './helpers.js';

/** What a READ channel may have in flight (and so buffered for a consumer that stopped): the window. */
function readWindow(c: AgentConnection): number {
  return c.supports('large-data') ? READ_WINDOW_LARGE : READ_WINDOW;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Deterministic pseudo-random bytes, generated in chunks. */
function* pattern(total: number, chunk: number): Generator<Buffer> {
  let seed = 12345;
  for (let off = 0; off < total; off += chunk) {
    const b = Buffer.allocUnsafe(Math.min(chunk, total - off));
    for (let i = 0; i < b.length; i += 4) {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      b.writeUInt32LE(seed, i);
    }
    yield b;
  }
}

describe('agent files', () => {
  let agent: RunningAgent;
  let conn: AgentConnection;
  let root: string;

  before(async () => {
    ({ agent, conn, root } = await startAgentWithRoot());
  });
  after(() => stopAgentWithRoot({ agent, conn, root }));

  it('writes and reads back binary data, creating parents', async () => {
    const data = randomBytes(300_000);
    const file = path.join(root, 'a/b/c/bin.dat');
    assert.deepEqual(await conn.writeFile(file, data, { mode: 0o600 }), { size: data.length });
    assert.ok(fs.readFileSync(file).equals(data));
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    assert.equal(fs.statSync(path.join(root, 'a/b')).mode & 0o777, 0o755);
    const { size, stream } = await conn.readFile(file);
    assert.equal(size, data.length);
    assert.ok((await readAll(stream)).equals(data));
    // no temp files left behind
    assert.deepEqual(fs.readdirSync(path.join(root, 'a/b/c')), ['bin.dat']);
  });

  it('replaces an existing file and writes empty files', async () => {
    const file = path.join(root, 'replace.txt');
    await conn.writeFile(file, Buffer.from('first version, long'));
    await conn.writeFile(file, Buffer.from('second'));
    assert.equal(fs.readFileSync(file, 'utf8'), 'second');
    await conn.writeFile(file, Buffer.alloc(0));
    assert.equal(fs.readFileSync(file, 'utf8'), '');
    const { size, stream } = await conn.readFile(file);
    assert.equal(size, 0);
    assert.equal((await readAll(stream)).length, 0);
  });

  for (const [label, offer] of [['1.1: the agent stops', undefined], ['as 1.0: the daemon cuts', []]] as const) {
    it(`a read is exactly the size announced at open, when the file grows meanwhile (${label})`, async () => {
      const c = offer ? await connectAgent(agent.socketPath, { offer }) : conn;
      try {
        const file = path.join(root, `grow-${offer ? 'old' : 'new'}.bin`);
        const data = randomBytes(4 << 20);
        fs.writeFileSync(file, data);
        const { size, stream } = await c.readFile(file);
        assert.equal(size, data.length);
        // The agent is at most the read window in, waiting for the consumer: the file grows past the size it announced.
        fs.appendFileSync(file, Buffer.alloc(3 << 20, 0x78));
        const got = await readAll(stream);
        assert.equal(got.length, data.length);
        assert.ok(got.equals(data));
        assert.match((await c.ping()).version, /capsule-agent/); // the connection stays usable
      } finally {
        if (c !== conn) c.close();
      }
    });

    it(`a read fails, not ends short, when the file shrinks meanwhile (${label})`, async () => {
      const c = offer ? await connectAgent(agent.socketPath, { offer }) : conn;
      try {
        const file = path.join(root, `shrink-${offer ? 'old' : 'new'}.bin`);
        // Larger than the read window (4 MiB in 1.1): however far the agent got before the truncate,
        // it meets the new end before the announced size.
        fs.writeFileSync(file, randomBytes(16 << 20));
        const { size, stream } = await c.readFile(file);
        assert.equal(size, 16 << 20);
        fs.truncateSync(file, 2 << 20);
        await assert.rejects(readAll(stream), /changed while being read: it ended after \d+ of the 16777216 bytes/);
      } finally {
        if (c !== conn) c.close();
      }
    });
  }

  it('streams a 50 MB file both ways', async () => {
    const total = 50 * 1024 * 1024;
    const want = createHash('sha256');
    for (const b of pattern(total, 1 << 20)) want.update(b);
    const file = path.join(root, 'big.bin');
    const t0 = Date.now();
    const res = await conn.writeFile(file, Readable.from(pattern(total, 1 << 20)));
    const t1 = Date.now();
    assert.equal(res.size, total);
    const { size, stream } = await conn.readFile(file);
    assert.equal(size, total);
    const got = createHash('sha256');
    let n = 0;
    for await (const c of stream) {
      got.update(c as Buffer);
      n += (c as Buffer).length;
    }
    console.log(`50 MB: write ${t1 - t0} ms, read ${Date.now() - t1} ms`);
    assert.equal(n, total);
    assert.equal(got.digest('hex'), want.digest('hex'));
  });

  it('a reader that stops reading stalls only its own channel', async () => {
    const file = path.join(root, 'stall.bin');
    fs.writeFileSync(file, Buffer.alloc(8 * 1024 * 1024, 7));
    const { stream } = await conn.readFile(file);
    // do not read: the agent stops after the window; other requests still flow
    await new Promise((r) => setTimeout(r, 100));
    const t0 = Date.now();
    const p = await conn.exec({ argv: ['echo', 'still-alive'], env: {}, stdin: false });
    const out = collect(p);
    await p.exited;
    assert.equal(out.stdout(), 'still-alive\n');
    assert.ok(Date.now() - t0 < 1000);
    assert.ok(stream.readableLength <= readWindow(conn), `buffered ${stream.readableLength}`);
    assert.equal((await readAll(stream)).length, 8 * 1024 * 1024);
  });

  it('a slow reader gets every byte with at most the read window buffered (batched credit never stalls)', async () => {
    const file = path.join(root, 'slow.bin');
    const size = 6 * 1024 * 1024 + 12344; // not a multiple of the frame or batch size
    fs.writeFileSync(file, Buffer.concat([...pattern(size, 65536)]));
    const want = createHash('sha256').update(fs.readFileSync(file)).digest('hex');
    const { stream } = await conn.readFile(file);
    const got = createHash('sha256');
    let total = 0;
    let maxBuffered = 0;
    let n = 0;
    for await (const c of stream) {
      got.update(c as Buffer);
      total += (c as Buffer).length;
      maxBuffered = Math.max(maxBuffered, stream.readableLength);
      if (++n % 5 === 0) await new Promise((r) => setTimeout(r, 2)); // a consumer slower than the agent
    }
    assert.equal(total, size);
    assert.equal(got.digest('hex'), want);
    assert.ok(maxBuffered <= readWindow(conn), `buffered ${maxBuffered}`);
  });

  it('an aborted write leaves no temp file and keeps the old content', async () => {
    const dir = path.join(root, 'abort');
    const file = path.join(dir, 'target.txt');
    fs.mkdirSync(dir);
    fs.writeFileSync(file, 'old');
    async function* failing(): AsyncGenerator<Buffer> {
      yield Buffer.alloc(100_000, 1);
      await new Promise((r) => setTimeout(r, 20));
      throw new Error('source broke');
    }
    await assert.rejects(conn.writeFile(file, Readable.from(failing())), /source broke/);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(fs.readdirSync(dir), ['target.txt']);
    assert.equal(fs.readFileSync(file, 'utf8'), 'old');
  });

  it('honours maxBytes', async () => {
    const file = path.join(root, 'limit.txt');
    fs.writeFileSync(file, 'x'.repeat(1000));
    await assert.rejects(conn.readFile(file, { maxBytes: 10 }), (e: any) => e.code === 'payload_too_large');
    const { stream } = await conn.readFile(file, { maxBytes: 1000 });
    assert.equal((await readAll(stream)).length, 1000);
  });

  it('lists raw names, including a newline and invalid UTF-8', async () => {
    const dir = path.join(root, 'listing');
    fs.mkdirSync(dir);
    const raw = Buffer.concat([Buffer.from('bad\nname-'), Buffer.from([0xff, 0xfe]), Buffer.from('.txt')]);
    fs.writeFileSync(Buffer.concat([Buffer.from(dir + '/'), raw]), 'data');
    fs.writeFileSync(path.join(dir, 'plain.txt'), '12345');
    fs.mkdirSync(path.join(dir, 'sub'));
    fs.symlinkSync('plain.txt', path.join(dir, 'link'));
    const { entries, truncated } = await conn.list(dir);
    assert.equal(truncated, false);
    const byName = new Map(entries.map((e) => [e.name, e]));
    assert.equal(entries.length, 4);
    const bad = entries.find((e) => e.nameBase64 !== undefined);
    assert.ok(bad);
    assert.equal(Buffer.from(bad.nameBase64!, 'base64').toString('hex'), raw.toString('hex'));
    assert.ok(bad.name.includes('\n'));
    assert.equal(bad.type, 'file');
    const plain = byName.get('plain.txt')!;
    assert.equal(plain.type, 'file');
    assert.equal(plain.size, 5);
    assert.equal(plain.path, `${dir}/plain.txt`);
    assert.ok(Math.abs(plain.mtimeMs - fs.statSync(path.join(dir, 'plain.txt')).mtimeMs) < 2);
    assert.equal(byName.get('sub')!.type, 'dir');
    assert.equal(byName.get('link')!.type, 'symlink');
    assert.equal(byName.get('link')!.symlinkTarget, 'plain.txt');
    assert.equal(byName.get('plain.txt')!.nameBase64, undefined);
  });

  it('caps long listings and says so', async () => {
    const dir = path.join(root, 'many');
    fs.mkdirSync(dir);
    for (let i = 0; i < 1500; i++) fs.writeFileSync(path.join(dir, `f${i}-${'x'.repeat(100)}`), '');
    const all = await conn.list(dir);
    assert.equal(all.entries.length, 1500);
    assert.equal(all.truncated, false);
    const some = await conn.list(dir, { limit: 100 });
    assert.equal(some.entries.length, 100);
    assert.equal(some.truncated, true);
    const exact = await conn.list(dir, { limit: 1500 });
    assert.equal(exact.truncated, false);
  });

  it('stats a symlink without following it', async () => {
    const target = path.join(root, 'target.txt');
    fs.writeFileSync(target, 'hello');
    const link = path.join(root, 'sym');
    fs.symlinkSync(target, link);
    const st = await conn.stat(link);
    assert.equal(st.type, 'symlink');
    assert.equal(st.symlinkTarget, target);
    assert.equal(st.name, 'sym');
    assert.equal(st.path, link);
    const f = await conn.stat(target);
    assert.equal(f.type, 'file');
    assert.equal(f.size, 5);
    assert.equal((await conn.stat('/')).type, 'dir');
    await assert.rejects(conn.stat(path.join(root, 'nope')), (e: any) => e.code === 'not_found' && e.details.errno === 'ENOENT');
  });

  it('refuses FIFOs, directories and missing files without hanging', async () => {
    const fifo = path.join(root, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const t0 = Date.now();
    await assert.rejects(conn.readFile(fifo), (e: any) => e.code === 'invalid_argument' && /regular file/.test(e.message));
    assert.ok(Date.now() - t0 < 1000);
    assert.equal((await conn.stat(fifo)).type, 'fifo');
    await assert.rejects(conn.readFile(root), (e: any) => e.code === 'invalid_argument' && e.details.errno === 'EISDIR');
    await assert.rejects(conn.readFile(path.join(root, 'missing')), (e: any) => e.code === 'not_found');
    await assert.rejects(conn.readFile('/dev/zero'), (e: any) => e.code === 'invalid_argument');
    await assert.rejects(conn.writeFile(root, Buffer.from('x')), (e: any) => e.code === 'invalid_argument');
  });

  it('mkdir -p, rename, and remove without following symlinks out of the tree', async () => {
    const outside = path.join(agent.dir, 'outside');
    fs.mkdirSync(outside);
    fs.writeFileSync(path.join(outside, 'precious'), 'keep me');
    const tree = path.join(root, 'tree');
    await conn.mkdir(`${tree}/x/y/z`);
    await conn.mkdir(`${tree}/x/y/z`); // idempotent
    assert.ok(fs.statSync(`${tree}/x/y/z`).isDirectory());
    fs.writeFileSync(`${tree}/x/y/z/file`, 'f');
    fs.symlinkSync(outside, `${tree}/x/escape`);
    fs.writeFileSync(`${tree}/top.txt`, 'top');
    await assert.rejects(conn.mkdir(`${tree}/top.txt`), (e: any) => e.code === 'conflict');

    await conn.rename(`${tree}/top.txt`, `${tree}/moved.txt`);
    assert.equal(fs.readFileSync(`${tree}/moved.txt`, 'utf8'), 'top');
    await assert.rejects(conn.rename(`${tree}/nope`, `${tree}/x`), (e: any) => e.code === 'not_found');

    await assert.rejects(conn.remove(tree), (e: any) => e.code === 'conflict' && e.details.errno === 'ENOTEMPTY');
    await conn.remove(`${tree}/moved.txt`);
    await conn.remove(tree, { recursive: true });
    assert.equal(fs.existsSync(tree), false);
    assert.equal(fs.readFileSync(path.join(outside, 'precious'), 'utf8'), 'keep me');
    await assert.rejects(conn.remove(tree), (e: any) => e.code === 'not_found');

    // a symlink itself is removed, not its target
    fs.symlinkSync(outside, path.join(root, 'link-to-outside'));
    await conn.remove(path.join(root, 'link-to-outside'), { recursive: true });
    assert.ok(fs.existsSync(path.join(outside, 'precious')));
  });

  it('refuses relative paths', async () => {
    await assert.rejects(conn.stat('relative/path'), (e: any) => e.code === 'invalid_argument');
    await assert.rejects(conn.readFile('x'), (e: any) => e.code === 'invalid_argument');
  });
});

/** Talk to the agent with hand-made frames to check its own validation. */
describe('agent raw protocol', () => {
  let agent: RunningAgent;
  before(async () => {
    agent = await startAgent();
  });
  after(async () => {
    await agent.stop();
  });

  function rawConnect(): Promise<{ sock: net.Socket; next: () => Promise<ReturnType<FrameDecoder['push']>[number] | null> }> {
    return new Promise((resolve, reject) => {
      const sock = net.createConnection(agent.socketPath);
      const dec = new FrameDecoder();
      const queue: Array<ReturnType<FrameDecoder['push']>[number] | null> = [];
      const waiters: Array<(f: ReturnType<FrameDecoder['push']>[number] | null) => void> = [];
      const deliver = (f: ReturnType<FrameDecoder['push']>[number] | null): void => {
        const w = waiters.shift();
        if (w) w(f);
        else queue.push(f);
      };
      sock.on('data', (d) => dec.push(d).forEach(deliver));
      sock.on('close', () => deliver(null));
      sock.on('error', () => undefined);
      sock.once('connect', () =>
        resolve({
          sock,
          next: () => (queue.length ? Promise.resolve(queue.shift()!) : new Promise((r) => waiters.push(r))),
        }),
      );
      sock.once('error', reject);
    });
  }

  it('the agent itself refuses relative paths with EINVAL', async () => {
    const { sock, next } = await rawConnect();
    sock.write(encodeFrame(0, FT.HELLO, 0, new PayloadWriter().u32(PROTO_VERSION).finish()));
    assert.equal((await next())!.type, FT.HELLO);
    sock.write(encodeFrame(7, FT.STAT, 0, new PayloadWriter().bytes('etc/passwd').finish()));
    const f = (await next())!;
    assert.equal(f.channel, 7);
    assert.equal(f.type, FT.ERROR);
    assert.equal(new PayloadReader(f.payload, 'ERROR').bytes(64).toString(), 'EINVAL');
    sock.destroy();
  });

  it('a malformed frame closes only that connection', async () => {
    const good = await connectAgent(agent.socketPath);
    const { sock, next } = await rawConnect();
    sock.write(encodeFrame(0, FT.HELLO, 0, new PayloadWriter().u32(PROTO_VERSION).finish()));
    await next();
    // truncated EXEC payload
    sock.write(encodeFrame(3, FT.EXEC, 0, Buffer.from([1, 0, 0])));
    assert.equal(await next(), null);
    // oversize length on a fresh connection
    const r2 = await rawConnect();
    const hdr = Buffer.alloc(12);
    hdr.writeUInt32BE(0xffffffff, 0);
    r2.sock.write(hdr);
    assert.equal(await r2.next(), null);
    // frames before HELLO
    const r3 = await rawConnect();
    r3.sock.write(encodeFrame(1, FT.PING, 0));
    assert.equal(await r3.next(), null);
    assert.match((await good.ping()).version, /capsule-agent/);
    good.close();
  });

  it('unknown request types get ENOSYS, not a disconnect', async () => {
    const { sock, next } = await rawConnect();
    sock.write(encodeFrame(0, FT.HELLO, 0, new PayloadWriter().u32(PROTO_VERSION).finish()));
    await next();
    sock.write(encodeFrame(9, 0x30, 0, Buffer.alloc(4)));
    const f = (await next())!;
    assert.equal(f.type, FT.ERROR);
    assert.equal(new PayloadReader(f.payload, 'ERROR').bytes(64).toString(), 'ENOSYS');
    sock.write(encodeFrame(10, FT.PING, 0));
    assert.equal((await next())!.type, FT.OK);
    sock.destroy();
  });
});
