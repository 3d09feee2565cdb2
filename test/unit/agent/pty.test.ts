/**
 * Terminals (protocol 1.2, feature pty) against the real agent run as a host
 * process: the size is set before the process starts, RESIZE changes it, ^C
 * reaches the foreground job and not the shell, a detached terminal keeps its
 * last output for the next ATTACH, and an agent without the feature refuses
 * clearly before anything is sent.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { connectAgent } from '../../../src/agent/client.js';
import type { AgentConnection, AgentProcess } from '../../../src/agent/types.js';
import { SandboxError } from '../../../src/errors/index.js';
import { buildAgentVariant, startAgent, type RunningAgent } from './helpers.js';

const ENV = { PATH: '/usr/local/bin:/usr/bin:/bin', TERM: 'xterm-256color', PS1: '$ ' };

/** Collects a terminal's output; `until` waits for a pattern in what came after `from`. */
function screen(p: AgentProcess) {
  let text = '';
  const waiters: Array<() => void> = [];
  p.on('data', (_s, chunk) => {
    text += chunk.toString('latin1');
    for (const w of waiters.splice(0)) w();
  });
  return {
    get text() {
      return text;
    },
    async until(re: RegExp, from = 0, ms = 5000): Promise<RegExpMatchArray> {
      const deadline = Date.now() + ms;
      for (;;) {
        const m = text.slice(from).match(re);
        if (m) return m;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${re} in ${JSON.stringify(text.slice(from))}`);
        await new Promise<void>((r) => {
          const t = setTimeout(r, 100);
          waiters.push(() => {
            clearTimeout(t);
            r();
          });
        });
      }
    },
  };
}

function startShell(conn: AgentConnection, rows = 24, cols = 80): Promise<AgentProcess> {
  return conn.exec({ argv: ['sh', '-i'], env: ENV, stdin: false, streams: [{ id: 1, kind: 'pty', fds: [0, 1, 2], rows, cols }] });
}

describe('agent terminals', () => {
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

  it('starts at the size asked for, and RESIZE changes it', async () => {
    const p = await startShell(conn, 33, 101);
    const s = screen(p);
    await p.writeStream(1, Buffer.from('stty size\n'));
    await s.until(/33 101\r\n/);
    await p.resize(50, 132);
    const mark = s.text.length;
    await p.writeStream(1, Buffer.from('stty size; exit 7\n'));
    await s.until(/50 132\r\n/, mark);
    assert.deepEqual(await p.exited, { exitCode: 7 });
  });

  it('^C interrupts the foreground job; the shell stays and answers', async () => {
    const p = await startShell(conn);
    const s = screen(p);
    await p.writeStream(1, Buffer.from('sleep 100\n'));
    await new Promise((r) => setTimeout(r, 300));
    await p.writeStream(1, Buffer.from([3]));
    await p.writeStream(1, Buffer.from('echo after=$?\n'));
    await s.until(/after=130/);
    await p.writeStream(1, Buffer.from('echo still-here; exit\n'));
    await s.until(/still-here\r\n/);
    assert.equal((await p.exited).exitCode, 0);
  });

  it('carries all 256 byte values both ways in raw mode', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-pty-'));
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    fs.writeFileSync(path.join(dir, 'all.bin'), all);
    const p = await conn.exec({
      argv: ['sh', '-c', `stty raw -echo; printf R; head -c 256 > ${dir}/in.bin; printf '<'; cat ${dir}/all.bin; printf '>'`],
      env: ENV,
      stdin: false,
      streams: [{ id: 1, kind: 'pty', fds: [0, 1, 2] }],
    });
    const chunks: Buffer[] = [];
    let ready!: () => void;
    const isReady = new Promise<void>((r) => (ready = r));
    p.on('data', (_s, c) => {
      chunks.push(c);
      if (Buffer.concat(chunks).includes('R')) ready();
    });
    await isReady;
    await p.writeStream(1, all);
    assert.equal((await p.exited).exitCode, 0);
    const out = Buffer.concat(chunks);
    const body = out.subarray(out.indexOf('<') + 1, out.lastIndexOf('>'));
    assert.ok(body.equals(all), `output bytes: ${body.toString('hex')}`);
    assert.ok(fs.readFileSync(path.join(dir, 'in.bin')).equals(all), 'input bytes');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a detached terminal keeps its recent output for the next ATTACH', async () => {
    const p = await startShell(conn);
    const s = screen(p);
    await p.writeStream(1, Buffer.from('echo ready\n'));
    await s.until(/ready\r\n/);
    p.detach();
    const other = await connectAgent(agent.socketPath, { timeoutMs: 3000 });
    try {
      const again = await other.attach(p.pid);
      assert.deepEqual(again.streams, [{ id: 1, kind: 'pty' }]);
      const s2 = screen(again);
      await again.writeStream(1, Buffer.from('echo back-$((6*7)); exit\n'));
      await s2.until(/back-42\r\n/);
      assert.equal((await again.exited).exitCode, 0);
    } finally {
      other.close();
    }
  });

  it('an agent without the feature refuses before anything is sent', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-agent-variants-'));
    const old = await startAgent({ binary: buildAgentVariant(dir, 'v1.1') });
    const c = await connectAgent(old.socketPath, { timeoutMs: 3000 });
    try {
      await assert.rejects(startShell(c), (e: unknown) => e instanceof SandboxError && /does not support pty/.test((e as Error).message));
      // The connection is fine afterwards.
      assert.match((await c.ping()).version, /capsule-agent\/0\.2\.0/);
    } finally {
      c.close();
      await old.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
