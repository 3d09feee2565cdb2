import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { connectAgent } from '../../../src/agent/client.js';
import type { AgentConnection } from '../../../src/agent/types.js';
import { collect, sleep, startAgent, type RunningAgent } from './helpers.js';

const ENV = { PATH: '/usr/local/bin:/usr/bin:/bin' };

describe('agent exec', () => {
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

  it('answers ping with its version', async () => {
    const { version } = await conn.ping();
    assert.match(version, /^capsule-agent\//);
  });

  it('runs echo and reports the exit code', async () => {
    const p = await conn.exec({ argv: ['sh', '-c', 'echo hello; exit 3'], env: ENV, stdin: false });
    assert.ok(p.pid > 0);
    const out = collect(p);
    const st = await p.exited;
    assert.equal(out.stdout(), 'hello\n');
    assert.deepEqual(st, { exitCode: 3 });
  });

  it('keeps order within each stream', async () => {
    const p = await conn.exec({ argv: ['sh', '-c', 'i=1; while [ $i -le 2000 ]; do echo $i; echo e$i >&2; i=$((i+1)); done'], env: ENV, stdin: false });
    const out = collect(p);
    assert.equal((await p.exited).exitCode, 0);
    const nums = Array.from({ length: 2000 }, (_, i) => i + 1);
    assert.equal(out.stdout(), nums.map((n) => `${n}\n`).join(''));
    assert.equal(out.stderr(), nums.map((n) => `e${n}\n`).join(''));
  });

  it('reports signal deaths as 128+sig', async () => {
    const self = await conn.exec({ argv: ['sh', '-c', 'kill -9 $$'], env: ENV, stdin: false });
    assert.deepEqual(await self.exited, { exitCode: 137, signal: 'SIGKILL' });

    const long = await conn.exec({ argv: ['sleep', '30'], env: ENV, stdin: false });
    await long.signal('SIGKILL');
    assert.deepEqual(await long.exited, { exitCode: 137, signal: 'SIGKILL' });

    const term = await conn.exec({ argv: ['sleep', '30'], env: ENV, stdin: false });
    await term.signal(15);
    assert.deepEqual(await term.exited, { exitCode: 143, signal: 'SIGTERM' });
  });

  it('passes env and cwd', async () => {
    const p = await conn.exec({ argv: ['sh', '-c', 'echo "$FOO"; pwd; echo "${HOME:-unset}"'], env: { ...ENV, FOO: 'bar baz' }, cwd: agent.dir, stdin: false });
    const out = collect(p);
    await p.exited;
    assert.equal(out.stdout(), `bar baz\n${agent.dir}\nunset\n`);
  });

  it('uses the default PATH when env has none', async () => {
    const p = await conn.exec({ argv: ['true'], env: {}, stdin: false });
    assert.equal((await p.exited).exitCode, 0);
  });

  it('round-trips stdin through cat, with flow control', async () => {
    const p = await conn.exec({ argv: ['cat'], env: ENV, stdin: true });
    const chunks: Buffer[] = [];
    p.on('stdout', (b) => chunks.push(b));
    const big = Buffer.alloc(3 * 1024 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
    await p.writeStdin(Buffer.from('hello '));
    await p.writeStdin(big);
    await p.writeStdin(Buffer.from(' bye'));
    await p.closeStdin();
    assert.equal((await p.exited).exitCode, 0);
    const all = Buffer.concat(chunks);
    assert.equal(all.length, 6 + big.length + 4);
    assert.ok(all.subarray(6, 6 + big.length).equals(big));
    assert.equal(all.subarray(all.length - 4).toString(), ' bye');
  });

  it('stdin is /dev/null without a pipe', async () => {
    const p = await conn.exec({ argv: ['cat'], env: ENV, stdin: false });
    const out = collect(p);
    assert.equal((await p.exited).exitCode, 0);
    assert.equal(out.stdout(), '');
  });

  it('starts commands with no signal ignored or blocked, and no agent fd open', async () => {
    // The agent ignores SIGPIPE and keeps /dev/null open for stdin: neither may leak into a command.
    for (let i = 0; i < 3; i++) {
      const p = await conn.exec({ argv: ['sh', '-c', 'grep -E "^Sig(Ign|Blk)" /proc/self/status; for f in /proc/self/fd/*; do readlink "$f"; done; :'], env: ENV, stdin: i === 1 });
      if (i === 1) await p.closeStdin();
      const out = collect(p);
      assert.equal((await p.exited).exitCode, 0);
      const text = out.stdout();
      assert.match(text, /^SigIgn:\s+0+$/m);
      assert.match(text, /^SigBlk:\s+0+$/m);
      // The agent's own /dev/null (close-on-exec) never shows up beside stdin.
      const devnull = text.split('\n').filter((l) => l === '/dev/null').length;
      assert.equal(devnull, i === 1 ? 0 : 1, text);
    }
  });

  it('runs commands on all the CPUs the agent may use (it starts them on its own CPU, then lets go)', async () => {
    const mine = /^Cpus_allowed_list:\s*(\S+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1];
    for (let i = 0; i < 5; i++) {
      const p = await conn.exec({ argv: ['grep', 'Cpus_allowed_list', '/proc/self/status'], env: ENV, stdin: false });
      const out = collect(p);
      assert.equal((await p.exited).exitCode, 0);
      assert.equal(/^Cpus_allowed_list:\s*(\S+)$/m.exec(out.stdout())?.[1], mine);
    }
  });

  it('reports pre-exec failures as errors', async () => {
    await assert.rejects(conn.exec({ argv: ['no-such-command-xyz'], env: ENV, stdin: false }), (e: any) => {
      assert.equal(e.code, 'not_found');
      assert.equal(e.details.errno, 'ENOENT');
      assert.match(e.message, /no-such-command-xyz/);
      return true;
    });
    await assert.rejects(conn.exec({ argv: ['true'], env: ENV, cwd: '/no/such/dir', stdin: false }), (e: any) => e.code === 'not_found' && /working directory/.test(e.message));
    await assert.rejects(conn.exec({ argv: ['true'], env: ENV, user: 'no-such-user-xyz', stdin: false }), (e: any) => e.code === 'invalid_argument' && /unknown user/.test(e.message));
    await assert.rejects(conn.exec({ argv: ['/etc/passwd'], env: ENV, stdin: false }), (e: any) => e.code === 'permission_denied');
  });

  it('runs as a given user and group', async () => {
    const p = await conn.exec({ argv: ['id', '-u'], env: ENV, user: 'nobody', stdin: false });
    const out = collect(p);
    assert.equal((await p.exited).exitCode, 0);
    assert.equal(out.stdout().trim(), '65534');
    const q = await conn.exec({ argv: ['sh', '-c', 'id -u; id -g'], env: ENV, user: '1234:4321', stdin: false });
    const out2 = collect(q);
    await q.exited;
    assert.equal(out2.stdout(), '1234\n4321\n');
  });

  it('does not hang on a backgrounded grandchild holding stdout', async () => {
    const t0 = Date.now();
    const p = await conn.exec({ argv: ['sh', '-c', 'sleep 20 & echo $!'], env: ENV, stdin: false });
    const out = collect(p);
    const st = await p.exited;
    assert.equal(st.exitCode, 0);
    assert.ok(Date.now() - t0 < 2000, `took ${Date.now() - t0} ms`);
    const pid = Number(out.stdout().trim());
    assert.ok(pid > 0);
    process.kill(pid, 'SIGKILL');
  });

  it('delivers a 20 MB flood completely while another exec stays fast', async () => {
    const n = 3_000_000; // seq 1..n is ~22.9 MB
    const expected = createHash('sha256');
    for (let start = 1; start <= n; start += 100_000) {
      let s = '';
      for (let i = start; i < start + 100_000 && i <= n; i++) s += `${i}\n`;
      expected.update(s);
    }
    const p = await conn.exec({ argv: ['seq', '1', String(n)], env: ENV, stdin: false });
    const h = createHash('sha256');
    let bytes = 0;
    let quickMs = -1;
    let started = false;
    p.on('stdout', (b) => {
      h.update(b);
      bytes += b.length;
      if (!started && bytes > 1_000_000) {
        started = true;
        const t0 = Date.now();
        void conn.exec({ argv: ['echo', 'quick'], env: ENV, stdin: false }).then(async (q) => {
          const out = collect(q);
          await q.exited;
          assert.equal(out.stdout(), 'quick\n');
          quickMs = Date.now() - t0;
        });
      }
    });
    assert.equal((await p.exited).exitCode, 0);
    assert.ok(bytes > 20_000_000, `got ${bytes} bytes`);
    assert.equal(h.digest('hex'), expected.digest('hex'));
    while (quickMs < 0) await sleep(5);
    console.log(`flood: ${bytes} bytes; concurrent exec took ${quickMs} ms`);
    assert.ok(quickMs < 1000, `concurrent exec took ${quickMs} ms`);
  });

  it('measures exec round trips of /bin/true', async () => {
    const times: number[] = [];
    for (let i = 0; i < 200; i++) {
      const t0 = process.hrtime.bigint();
      const p = await conn.exec({ argv: ['/bin/true'], env: ENV, stdin: false });
      await p.exited;
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    times.sort((a, b) => a - b);
    const p50 = times[100]!;
    const p99 = times[197]!;
    console.log(`exec /bin/true round trip: p50 ${p50.toFixed(3)} ms, p99 ${p99.toFixed(3)} ms (200 runs)`);
  });

  it('serves several connections at once', async () => {
    const others = await Promise.all([1, 2, 3].map(() => connectAgent(agent.socketPath)));
    const results = await Promise.all(
      others.map(async (c, i) => {
        const p = await c.exec({ argv: ['sh', '-c', `echo conn${i}`], env: ENV, stdin: false });
        const out = collect(p);
        await p.exited;
        return out.stdout();
      }),
    );
    assert.deepEqual(results, ['conn0\n', 'conn1\n', 'conn2\n']);
    for (const c of others) c.close();
  });
});

describe('agent processes across connections', () => {
  let agent: RunningAgent;
  before(async () => {
    agent = await startAgent();
  });
  after(async () => {
    await agent.stop();
  });

  it('keeps a process across a reconnect: PS lists it, ATTACH gets buffered output and exit', async () => {
    const c1 = await connectAgent(agent.socketPath);
    const p = await c1.exec({ argv: ['sh', '-c', 'sleep 0.3; echo buffered; sleep 0.5; echo live; exit 7'], env: ENV, stdin: false });
    const pid = p.pid;
    const closed = new Promise<Error | undefined>((r) => c1.onClose(r));
    c1.close();
    assert.equal(await closed, undefined);
    await assert.rejects(p.exited, (e: any) => e.code === 'sandbox_error');

    await sleep(500);
    const c2 = await connectAgent(agent.socketPath);
    const ps = await c2.listProcesses();
    const entry = ps.find((x) => x.pid === pid);
    assert.ok(entry, `pid ${pid} not in ${JSON.stringify(ps)}`);
    assert.deepEqual(entry.argv, ['sh', '-c', 'sleep 0.3; echo buffered; sleep 0.5; echo live; exit 7']);
    const a = await c2.attach(pid);
    const out = collect(a);
    assert.deepEqual(await a.exited, { exitCode: 7 });
    assert.equal(out.stdout(), 'buffered\nlive\n');
    c2.close();
  });

  it('keeps the exit status of a finished unattached process', async () => {
    const c1 = await connectAgent(agent.socketPath);
    const p = await c1.exec({ argv: ['sh', '-c', 'sleep 0.1; echo gone; exit 4'], env: ENV, stdin: false });
    c1.close();
    await sleep(400);
    const c2 = await connectAgent(agent.socketPath);
    assert.equal((await c2.listProcesses()).find((x) => x.pid === p.pid), undefined);
    const all = await c2.listProcesses({ includeExited: true });
    const e = all.find((x) => x.pid === p.pid);
    assert.equal(e?.exited, true);
    assert.equal(e?.exitCode, 4);
    const a = await c2.attach(p.pid);
    const out = collect(a);
    assert.deepEqual(await a.exited, { exitCode: 4 });
    assert.equal(out.stdout(), 'gone\n');
    await assert.rejects(c2.attach(p.pid), (err: any) => err.code === 'not_found');
    c2.close();
  });

  it('fails pending work with a SandboxError when the agent dies', async () => {
    const c = await connectAgent(agent.socketPath);
    const closed = new Promise<Error | undefined>((r) => c.onClose(r));
    const p = await c.exec({ argv: ['sleep', '30'], env: ENV, stdin: false });
    agent.child.kill('SIGKILL');
    await assert.rejects(p.exited, (e: any) => e.code === 'sandbox_error');
    const err = await closed;
    assert.equal((err as any)?.code, 'sandbox_error');
    await assert.rejects(c.ping(), (e: any) => e.code === 'sandbox_error');
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  });

  it('times out when nothing answers', async () => {
    const net = await import('node:net');
    const path = `${agent.dir}/silent.sock`;
    const srv = net.createServer(() => undefined).listen(path);
    await new Promise((r) => srv.once('listening', r));
    await assert.rejects(connectAgent(path, { timeoutMs: 200 }), (e: any) => e.code === 'timeout');
    srv.close();
    await assert.rejects(connectAgent(`${agent.dir}/missing.sock`), (e: any) => e.code === 'sandbox_error');
  });
});
