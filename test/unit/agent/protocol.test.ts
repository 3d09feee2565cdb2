/**
 * Protocol negotiation: the daemon serves any agent of its major version with
 * the features both have, refuses another major with a message naming both
 * versions, and refuses a request that needs a missing feature before sending
 * it. Fake agents pin the wire format; agents built from these sources with
 * older or newer version macros show the real thing.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { connectAgent } from '../../../src/agent/client.js';
import { AgentFeatureError, AgentVersionError } from '../../../src/agent/errors.js';
import { encodeFrame, FrameDecoder, FT, PayloadReader, PayloadWriter, PROTO_MAJOR, type Frame } from '../../../src/agent/frames.js';
import { ALL_FEATURES } from '../../../src/agent/protocol.js';
import { SandboxError } from '../../../src/errors/index.js';
import { buildAgentVariant, collect, startAgent, type RunningAgent } from './helpers.js';

const ENV = { PATH: '/usr/local/bin:/usr/bin:/bin' };

/** A fake agent: answers HELLO with `hello`, records every frame it gets, answers PING. */
async function fakeAgent(hello: Buffer, opts: { closeAfterHello?: boolean } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-fake-agent-'));
  const socketPath = path.join(dir, 'agent.sock');
  const received: Frame[] = [];
  const server = net.createServer((sock) => {
    const dec = new FrameDecoder();
    sock.on('data', (chunk: Buffer) => {
      for (const f of dec.push(chunk)) {
        received.push(f);
        if (f.type === FT.HELLO) {
          sock.write(encodeFrame(0, FT.HELLO, 0, hello));
          if (opts.closeAfterHello) sock.end();
        } else if (f.type === FT.PING) {
          sock.write(encodeFrame(f.channel, FT.OK, 0, Buffer.from('fake')));
        }
      }
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(socketPath, r));
  return {
    socketPath,
    received,
    async close() {
      await new Promise<void>((r) => server.close(() => r()));
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** What every 1.0 agent answered: u32 version, bytes agentVersion, u32 maxPayload, u32 initialWindow. */
const HELLO_1_0 = new PayloadWriter().u32(1).bytes('capsule-agent/0.1.0').u32(1 << 20).u32(256 * 1024).finish();

describe('agent protocol negotiation', () => {
  it('takes a 1.0 HELLO (no minor, no features) as protocol 1.0 with the 1.0 feature set', async () => {
    const fake = await fakeAgent(HELLO_1_0);
    try {
      const conn = await connectAgent(fake.socketPath, { timeoutMs: 3000 });
      assert.equal(conn.agentVersion, 'capsule-agent/0.1.0');
      assert.equal(conn.protocol.major, 1);
      assert.equal(conn.protocol.minor, 0);
      assert.deepEqual([...conn.protocol.features], []);
      for (const f of ALL_FEATURES) assert.equal(conn.supports(f), false);
      assert.deepEqual(await conn.ping(), { version: 'fake' });
      conn.close();
    } finally {
      await fake.close();
    }
  });

  it('sends a HELLO a 1.0 agent can read: the major first, the 1.1 fields after the ones it knew', async () => {
    const fake = await fakeAgent(HELLO_1_0);
    try {
      const conn = await connectAgent(fake.socketPath, { timeoutMs: 3000 });
      conn.close();
      const hello = fake.received.find((f) => f.type === FT.HELLO)!;
      const r = new PayloadReader(hello.payload, 'HELLO');
      assert.equal(r.u32(), 1); // what a 1.0 agent reads; it ignores the rest
      assert.equal(r.bytes(256).toString(), 'capsule-daemon');
      assert.equal(r.u32(), 4); // minor
      assert.equal(r.u64big(), 0b1111111n); // every feature this daemon knows
      r.done();
    } finally {
      await fake.close();
    }
  });

  it('ignores features it did not offer and bits it does not know', async () => {
    const hello = new PayloadWriter().u32(1).bytes('capsule-agent/1.7.0').u32(1 << 20).u32(256 * 1024).u32(7).u64(0xffn << 56n | 0b111n).finish();
    const fake = await fakeAgent(hello);
    try {
      const conn = await connectAgent(fake.socketPath, { timeoutMs: 3000, offer: ['read-to-size'] });
      assert.equal(conn.protocol.minor, 7);
      assert.deepEqual([...conn.protocol.features], ['read-to-size']);
      conn.close();
    } finally {
      await fake.close();
    }
  });

  it('refuses an agent of another major version, naming both versions', async () => {
    const hello = new PayloadWriter().u32(2).bytes('capsule-agent/2.0.0').u32(1 << 20).u32(256 * 1024).u32(3).u64(0n).finish();
    const fake = await fakeAgent(hello, { closeAfterHello: true });
    try {
      const err = await connectAgent(fake.socketPath, { timeoutMs: 3000, sandboxId: 'sbx_test' }).then(
        () => assert.fail('connected to a major 2 agent'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof AgentVersionError, String(err));
      assert.ok(err instanceof SandboxError);
      assert.equal(err.code, 'sandbox_error');
      assert.match(err.message, /agent in sandbox sbx_test \(capsule-agent\/2\.0\.0, protocol 2\.3\)/);
      assert.match(err.message, /this daemon \(protocol 1\.4\)/);
      assert.match(err.message, /protocol 1\.x only/);
      // Nothing but the HELLO went to it.
      assert.deepEqual(fake.received.map((f) => f.type), [FT.HELLO]);
    } finally {
      await fake.close();
    }
  });

  it('refuses a request that needs a missing feature before anything is sent', async () => {
    const fake = await fakeAgent(HELLO_1_0);
    try {
      const conn = await connectAgent(fake.socketPath, { timeoutMs: 3000, sandboxId: 'sbx_old' });
      const before = fake.received.length;
      const err = await conn
        .exec({ argv: ['true'], env: ENV, stdin: false, streams: [{ id: 1, kind: 'pipe-out', fds: [1, 2] }] })
        .then(() => assert.fail('exec with streams went to a 1.0 agent'), (e: unknown) => e);
      assert.ok(err instanceof AgentFeatureError, String(err));
      assert.equal(err.code, 'sandbox_error');
      assert.equal(
        err.message,
        "the agent in sandbox sbx_old (capsule-agent/0.1.0, protocol 1.0) does not support exec-streams; " +
          "a sandbox keeps the agent it was created with: create a new sandbox to get this daemon's agent",
      );
      assert.deepEqual(err.details, { feature: 'exec-streams', agentVersion: 'capsule-agent/0.1.0', protocol: '1.0', sandboxId: 'sbx_old' });
      await conn.ping(); // the connection is fine, and the ping is the only frame since
      assert.deepEqual(fake.received.slice(before).map((f) => f.type), [FT.PING]);
      conn.close();
    } finally {
      await fake.close();
    }
  });
});

describe('agent protocol with real agents of each version', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-agent-variants-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('negotiates 1.4 and every feature with the current agent; an older daemon gets none', async () => {
    const agent = await startAgent();
    try {
      const conn = await connectAgent(agent.socketPath, { timeoutMs: 3000 });
      assert.deepEqual({ major: conn.protocol.major, minor: conn.protocol.minor }, { major: PROTO_MAJOR, minor: 4 });
      assert.deepEqual([...conn.protocol.features].sort(), [...ALL_FEATURES].sort());
      conn.close();
      // A daemon that offers nothing (as a 1.0 daemon) gets the 1.0 behaviour.
      const old = await connectAgent(agent.socketPath, { timeoutMs: 3000, offer: [] });
      assert.deepEqual([...old.protocol.features], []);
      old.close();
    } finally {
      await agent.stop();
    }
  });

  it('answers a 1.0 daemon HELLO (just the version) and enables no feature on that connection', async () => {
    const agent = await startAgent();
    try {
      const sock = net.connect(agent.socketPath);
      const dec = new FrameDecoder();
      const frames: Frame[] = [];
      const got = new Promise<void>((resolve) => sock.on('data', (c: Buffer) => {
        frames.push(...dec.push(c));
        if (frames.length) resolve();
      }));
      sock.write(encodeFrame(0, FT.HELLO, 0, new PayloadWriter().u32(1).finish()));
      await got;
      const r = new PayloadReader(frames[0]!.payload, 'HELLO');
      assert.equal(r.u32(), 1);
      assert.match(r.bytes(256).toString(), /^capsule-agent\//);
      assert.equal(r.u32(), 1 << 20);
      assert.equal(r.u32(), 256 * 1024);
      assert.equal(r.u32(), 4); // minor
      assert.equal(r.u64big(), 0n); // nothing offered, nothing in effect
      sock.destroy();
    } finally {
      await agent.stop();
    }
  });

  it('serves a 1.0 agent: exec, stdin, files work, and features it lacks are refused', async () => {
    const agent = await startAgent({ binary: buildAgentVariant(dir, 'v1.0') });
    try {
      const conn = await connectAgent(agent.socketPath, { timeoutMs: 3000, sandboxId: 'sbx_v10' });
      assert.equal(conn.agentVersion, 'capsule-agent/0.1.0');
      assert.deepEqual({ major: conn.protocol.major, minor: conn.protocol.minor, n: conn.protocol.features.size }, { major: 1, minor: 0, n: 0 });
      const p = await conn.exec({ argv: ['sh', '-c', 'cat; echo done >&2'], env: ENV, stdin: true });
      const out = collect(p);
      await p.writeStdin(Buffer.alloc(300_000, 0x61));
      await p.closeStdin();
      assert.equal((await p.exited).exitCode, 0);
      assert.equal(out.stdout().length, 300_000);
      assert.equal(out.stderr(), 'done\n');
      const file = path.join(agent.dir, 'f.bin');
      const data = Buffer.alloc(3 << 20, 7);
      await conn.writeFile(file, data);
      const { size, stream } = await conn.readFile(file);
      const parts: Buffer[] = [];
      for await (const c of stream) parts.push(c as Buffer);
      assert.equal(size, data.length);
      assert.ok(Buffer.concat(parts).equals(data));
      await assert.rejects(
        conn.exec({ argv: ['true'], env: ENV, stdin: false, streams: [{ id: 1, kind: 'pipe-out', fds: [1] }] }),
        (e: unknown) => e instanceof AgentFeatureError && /capsule-agent\/0\.1\.0, protocol 1\.0\) does not support exec-streams/.test(e.message),
      );
      conn.close();
    } finally {
      await agent.stop();
    }
  });

  it('refuses an agent built as protocol 2.0 with a clear error, and does not hang', async () => {
    const agent = await startAgent({ binary: buildAgentVariant(dir, 'v2.0') });
    try {
      const t0 = Date.now();
      await assert.rejects(connectAgent(agent.socketPath, { timeoutMs: 3000, sandboxId: 'sbx_v2' }), (e: unknown) => {
        assert.ok(e instanceof AgentVersionError, String(e));
        assert.match(e.message, /sandbox sbx_v2 \(capsule-agent\/2\.0\.0, protocol 2\.0\) is not compatible with this daemon \(protocol 1\.4\)/);
        return true;
      });
      assert.ok(Date.now() - t0 < 2000, 'refused at the handshake, not by the timeout');
    } finally {
      await agent.stop();
    }
  });
});
