/**
 * The microVM agent transport's daemon side (src/runtime/microvm/mux.ts)
 * against a scripted guest on a real unix socket (standing in for QEMU's
 * chardev): the SYNC handshake (garbage before it is skipped), streams both
 * ways with credits, and what a hostile guest gets for breaking the rules:
 * its streams closed and a fresh SYNC, never an exception or unbounded memory.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MuxRelay, MUX_HDR, MUX_WINDOW } from '../../../src/runtime/microvm/mux.js';

const MAGIC = Buffer.from('capsule-mux1');

function frame(type: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(MUX_HDR + payload.length);
  b[0] = type;
  b.writeUInt16BE(payload.length, 2);
  b.writeUInt32BE(stream, 4);
  payload.copy(b, MUX_HDR);
  return b;
}

/** The guest's end: parses frames the relay sends. */
class Guest {
  buf = Buffer.alloc(0);
  frames: Array<{ type: number; stream: number; payload: Buffer }> = [];
  private waiters: Array<() => void> = [];
  constructor(readonly sock: net.Socket) {
    sock.on('data', (c: Buffer) => {
      this.buf = Buffer.concat([this.buf, c]);
      while (this.buf.length >= MUX_HDR) {
        const len = this.buf.readUInt16BE(2);
        if (this.buf.length < MUX_HDR + len) break;
        this.frames.push({ type: this.buf[0]!, stream: this.buf.readUInt32BE(4), payload: this.buf.subarray(MUX_HDR, MUX_HDR + len) });
        this.buf = this.buf.subarray(MUX_HDR + len);
      }
      for (const w of this.waiters.splice(0)) w();
    });
  }
  async next(type: number): Promise<{ type: number; stream: number; payload: Buffer }> {
    for (;;) {
      const i = this.frames.findIndex((f) => f.type === type);
      if (i >= 0) return this.frames.splice(i, 1)[0]!;
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }
}

describe('microVM mux relay', () => {
  let dir: string;
  let qemu: net.Server;
  let guest: Guest;
  let relay: MuxRelay;
  const warnings: string[] = [];
  const agentPath = () => path.join(dir, 'agent.sock');

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-mux-'));
    const serial = path.join(dir, 'serial.sock');
    const connected = new Promise<net.Socket>((resolve) => {
      qemu = net.createServer((s) => resolve(s));
    });
    await new Promise<void>((r) => qemu.listen(serial, r));
    relay = new MuxRelay(serial, agentPath(), { warn: (o) => void warnings.push(JSON.stringify(o)) });
    await relay.start(Date.now() + 5000);
    guest = new Guest(await connected);
  });
  after(() => {
    relay?.close();
    qemu?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('waits for the answer to its SYNC, skipping what came before it; connections made meanwhile open after', async () => {
    const sync = await guest.next(0xa5);
    assert.deepEqual(sync.payload, MAGIC);
    assert.equal(relay.isSynced, false);
    const early = net.createConnection(agentPath());
    await new Promise((r) => early.once('connect', r));
    // Half a stale frame and a SYNC with another nonce come first: both are skipped.
    guest.sock.write(Buffer.concat([Buffer.from([2, 0, 0, 50, 0, 0, 0, 9, 1, 2, 3]), frame(0xa5, sync.stream + 7, MAGIC)]));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(relay.isSynced, false);
    guest.sock.write(frame(0xa5, sync.stream, MAGIC));
    await relay.ready();
    const open = await guest.next(1);
    assert.ok(open.stream > 0);
    early.destroy();
    await guest.next(3);
  });

  it('carries bytes both ways, past a window, with credits', async () => {
    const c = net.createConnection(agentPath());
    await new Promise((r) => c.once('connect', r));
    const open = await guest.next(1);
    // Host to guest: more than a window; the relay stops at the window until the guest credits.
    const big = Buffer.alloc(MUX_WINDOW + 100_000, 7);
    c.write(big);
    let got = 0;
    while (got < big.length) {
      const f = await guest.next(2);
      assert.equal(f.stream, open.stream);
      got += f.payload.length;
      assert.ok(got <= big.length);
      if (got === MUX_WINDOW) {
        await new Promise((r) => setTimeout(r, 50));
        assert.equal(guest.frames.filter((x) => x.type === 2).length, 0, 'nothing past the window before a credit');
      }
      const cr = Buffer.alloc(4);
      cr.writeUInt32BE(f.payload.length, 0);
      guest.sock.write(frame(4, open.stream, cr));
    }
    // Guest to host: data, then the relay credits it once written to the client.
    const received: Buffer[] = [];
    c.on('data', (b: Buffer) => received.push(b));
    guest.sock.write(frame(2, open.stream, Buffer.from('hello from the guest')));
    const credit = await guest.next(4);
    assert.equal(credit.payload.readUInt32BE(0), 20);
    assert.equal(Buffer.concat(received).toString(), 'hello from the guest');
    // The guest closes the stream: the client sees EOF.
    const ended = new Promise((r) => c.once('end', r));
    guest.sock.write(frame(3, open.stream));
    await ended;
    c.destroy();
  });

  for (const [what, bad] of [
    ['a frame longer than the cap', (s: number) => Buffer.from([2, 0, 0xff, 0xff, 0, 0, 0, s])],
    ['nonzero flags', (s: number) => frame(2, s).fill(1, 1, 2)],
    ['an unknown type', (s: number) => frame(0x42, s)],
    ['an OPEN (only the daemon opens streams)', (s: number) => frame(1, s + 1)],
    ['credit beyond the window', (s: number) => frame(4, s, Buffer.from([0x7f, 0, 0, 0]))],
  ] as const) {
    it(`a guest sending ${what} gets its streams closed and a new SYNC; the relay goes on`, async () => {
      const c = net.createConnection(agentPath());
      await new Promise((r) => c.once('connect', r));
      const open = await guest.next(1);
      const closed = new Promise((r) => c.once('close', r));
      const before = warnings.length;
      guest.sock.write(bad(open.stream));
      await closed;
      assert.ok(warnings.length > before, 'logged');
      const sync = await guest.next(0xa5);
      assert.equal(relay.isSynced, false);
      guest.sock.write(frame(0xa5, sync.stream, MAGIC));
      await relay.ready();
      assert.equal(relay.streamCount, 0);
    });
  }
});
