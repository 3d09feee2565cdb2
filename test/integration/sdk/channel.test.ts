/**
 * The command channel (GET /v1/channel, src/sdk/channel.ts) against a real daemon and busybox
 * sandboxes: it must give exactly what POST .../commands gives (results and typed errors), keep
 * tenants apart, fall back to HTTP, reconnect, carry concurrent runs, and leave nothing behind.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { getEventListeners } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { REPO_ROOT, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import {
  ApiKeys,
  ConflictError,
  InvalidArgumentError,
  NotFoundError,
  RateLimitedError,
  Sandbox,
  UnauthenticatedError,
  UnavailableError,
  type CommandResult,
  type ConnectionOptions,
  type RunOptions,
} from '../../../src/sdk/index.js';
import { CommandChannel } from '../../../src/sdk/channel.js';
import { HttpClient } from '../../../src/sdk/http.js';
import { resolveConnection } from '../../../src/sdk/options.js';

let d: TestDaemon;
let dataDir: string;
let conn: ConnectionOptions;

function traversable(): string {
  // mkdtemp makes the directory 0700, which the sandbox's mapped root cannot traverse.
  const dir = tempDataDir();
  fs.chmodSync(dir, 0o755);
  return dir;
}

/** A sandbox seen through two Sandbox objects: one on the channel (the default), one on HTTP only. */
async function withPair<T>(fn: (ch: Sandbox, rest: Sandbox) => Promise<T>, opts: ConnectionOptions = conn): Promise<T> {
  const ch = await Sandbox.create({ ...opts, template: 'busybox' });
  const rest = await Sandbox.connect(ch.id, { ...opts, commandChannel: false });
  try {
    return await fn(ch, rest);
  } catch (e) {
    if (e instanceof Error) e.message = `[sandbox ${ch.id}] ${e.message}`;
    throw e;
  } finally {
    await ch.kill().catch(() => {});
    ch.close();
    rest.close();
  }
}

/** The error a call rejects with, or undefined. */
async function errorOf(p: Promise<unknown>): Promise<Error | undefined> {
  try {
    await p;
    return undefined;
  } catch (e) {
    return e as Error;
  }
}

function withoutPid(r: CommandResult): Omit<CommandResult, 'pid'> {
  const { pid: _pid, ...rest } = r;
  return rest;
}

describe('sdk command channel', () => {
  before(async () => {
    dataDir = traversable();
    d = await startTestDaemon({ dataDir });
    // Explicit: startTestDaemon points CAPSULE_API_KEY at the latest daemon, and one test starts another.
    conn = { apiUrl: d.url, apiKey: d.adminKey! };
  });
  after(async () => {
    await d?.stop();
    if (dataDir) await removeDataDir(dataDir);
  });

  it('gives the same results as POST .../commands', async () => {
    await withPair(async (ch, rest) => {
      const cases: Array<[string | string[], RunOptions & { background?: false }]> = [
        [['true'], {}],
        [['false'], {}],
        ['echo out; echo err >&2; exit 3', {}],
        ['echo "$A-$B" && pwd && id -u', { envs: { A: 'x', B: 'y z' }, cwd: '/tmp', user: '1000' }],
        ['cat', { stdin: 'fed through stdin\n' }],
        ['sleep 5', { timeoutMs: 200 }],
        ['yes | head -c 5000', { maxOutputBytes: 100 }],
        ['printf "\\377\\376ok"', { encoding: 'base64' }],
        ['printf "é€😀%.0s" $(seq 1 2000)', {}],
      ];
      for (const [cmd, opts] of cases) {
        const a = await ch.commands.run(cmd, opts);
        const b = await rest.commands.run(cmd, opts);
        assert.deepEqual(withoutPid(a), withoutPid(b), `${JSON.stringify(cmd)} ${JSON.stringify(opts)}`);
        assert.ok(a.pid > 0);
      }
      const channel = ch.commands.commandChannel!;
      assert.equal(channel.sent, cases.length, 'every run went over the channel');
      assert.equal(channel.connected, true);
      assert.equal(channel.opened, 1);
      assert.equal(rest.commands.commandChannel, undefined);
      // A request too large for one channel message (a big stdin) goes over HTTP, with the same result.
      const big = 'x'.repeat(300 * 1024);
      const viaHttp = await ch.commands.run('wc -c', { stdin: big });
      assert.equal(viaHttp.stdout.trim(), String(big.length));
      assert.equal(channel.sent, cases.length, 'not sent over the channel');
      const timed = await ch.commands.run('sleep 5', { timeoutMs: 200 });
      assert.equal(timed.timedOut, true);
      assert.equal(timed.exitCode, 137);
      assert.equal((await ch.commands.run('yes | head -c 5000', { maxOutputBytes: 100 })).stdoutTruncated, true);
    });
  });

  it('answers the same typed errors: invalid_argument, conflict (paused), not_found (killed)', async () => {
    await withPair(async (ch, rest) => {
      const bad: Array<[string[], RunOptions & { background?: false }, Function]> = [
        [[], {}, InvalidArgumentError],
        [['true'], { user: 'bad user' }, InvalidArgumentError],
        [['true'], { timeoutMs: -1 }, InvalidArgumentError],
        [['/no/such/program'], {}, NotFoundError],
        [['true'], { cwd: '/no/such/dir' }, NotFoundError],
      ];
      for (const [cmd, opts, cls] of bad) {
        const a = await errorOf(ch.commands.run(cmd, opts));
        const b = await errorOf(rest.commands.run(cmd, opts));
        assert.ok(a instanceof cls, `${JSON.stringify([cmd, opts])}: ${a}`);
        assert.equal(a.constructor, b?.constructor);
        assert.equal(a.message, b?.message);
        assert.deepEqual((a as NotFoundError).details, (b as NotFoundError).details);
      }
      assert.equal(ch.commands.commandChannel!.opened, 1);
      assert.equal(ch.commands.commandChannel!.sent, bad.length, 'errors came over the channel');
      // Background and streamed runs never go over the channel; a client that sends them is told so.
      const raw = new CommandChannel(new HttpClient(resolveConnection(conn)));
      const bg = await errorOf(raw.run(ch.id, { cmd: ['true'], background: true }, 5000));
      assert.ok(bg instanceof InvalidArgumentError, String(bg));
      raw.close();

      await ch.pause();
      const pa = await errorOf(ch.commands.run(['true']));
      const pb = await errorOf(rest.commands.run(['true']));
      assert.ok(pa instanceof ConflictError, String(pa));
      assert.ok(pb instanceof ConflictError, String(pb));
      assert.equal(pa.message, pb.message);
      await ch.resume();
      assert.equal((await ch.commands.run(['true'])).exitCode, 0);

      await Sandbox.kill(ch.id, conn);
      const ka = await errorOf(ch.commands.run(['true']));
      const kb = await errorOf(rest.commands.run(['true']));
      assert.ok(ka !== undefined && kb !== undefined);
      assert.equal(ka.constructor, kb.constructor);
      assert.equal(ka.message, kb.message);
    });
    const ghost = new CommandChannel(new HttpClient(resolveConnection(conn)));
    try {
      const e = await errorOf(ghost.run('sbx-000000000000', { cmd: ['true'] }, 5000));
      assert.ok(e instanceof NotFoundError, String(e));
    } finally {
      ghost.close();
    }
  });

  it("keeps tenants apart, authenticates every message, and stops a revoked key's channel at once", async () => {
    const alice = await ApiKeys.create({ name: 'chan-alice' }, conn);
    const bob = await ApiKeys.create({ name: 'chan-bob' }, conn);
    const aliceConn = { ...conn, apiKey: alice.key };
    await withPair(async (ch) => {
      assert.equal((await ch.commands.run(['true'])).exitCode, 0);
      // Bob's channel opens (his key is good) but alice's sandbox does not exist for him.
      const bobs = new CommandChannel(new HttpClient(resolveConnection({ ...conn, apiKey: bob.key })));
      try {
        const e = await errorOf(bobs.run(ch.id, { cmd: ['true'] }, 5000));
        assert.ok(e instanceof NotFoundError, String(e));
        assert.equal(bobs.connected, true, 'answered over the channel');
      } finally {
        bobs.close();
      }
      // A revoked key: the open channel's next message is refused.
      assert.equal(ch.commands.commandChannel!.connected, true);
      await ApiKeys.revoke(alice.id, conn);
      const e = await errorOf(ch.commands.run(['true']));
      assert.ok(e instanceof UnauthenticatedError, String(e));
      await Sandbox.kill(ch.id, conn);
    }, aliceConn).catch((e: unknown) => {
      // The fixture's own kill uses the revoked key; the sandbox was killed above with the admin key.
      if (!(e instanceof UnauthenticatedError)) throw e;
    });
    // Every message counts against the key's request rate, like a request: with 4 a minute, the create,
    // the channel's upgrade and two runs pass, and the third run is refused over the channel.
    const limited = await ApiKeys.create({ name: 'chan-limited', limits: { ratePerMinute: 4 } }, conn);
    const lim = await Sandbox.create({ ...conn, apiKey: limited.key, template: 'busybox' });
    try {
      assert.equal((await lim.commands.run(['true'])).exitCode, 0);
      assert.equal((await lim.commands.run(['true'])).exitCode, 0);
      const e = await errorOf(lim.commands.run(['true']));
      assert.ok(e instanceof RateLimitedError, String(e));
      assert.equal(lim.commands.commandChannel!.sent, 3);
    } finally {
      lim.close();
      await Sandbox.kill(lim.id, conn);
    }
    // A key the daemon does not know: the channel cannot open, and HTTP gives the typed error.
    const stranger = new CommandChannel(new HttpClient(resolveConnection({ ...conn, apiKey: 'cap_not-a-real-key' })));
    assert.equal(await stranger.run('sbx-000000000000', { cmd: ['true'] }, 5000), undefined, 'nothing sent: HTTP takes it');
    stranger.close();
  });

  it('runs concurrent commands on one channel and matches each answer to its run', async () => {
    await withPair(async (ch) => {
      const n = 24;
      const results = await Promise.all(
        Array.from({ length: n }, (_, i) => ch.commands.run(`sleep 0.$(( ${n - i} % 4 )); echo run-${i}; echo e${i} >&2; exit ${i % 7}`)),
      );
      results.forEach((r, i) => {
        assert.equal(r.stdout, `run-${i}\n`);
        assert.equal(r.stderr, `e${i}\n`);
        assert.equal(r.exitCode, i % 7);
      });
      assert.equal(ch.commands.commandChannel!.opened, 1);
      assert.equal(ch.commands.commandChannel!.sent, n);
      assert.equal(ch.commands.commandChannel!.inFlight, 0);
    });
  });

  it('falls back to HTTP when the channel cannot be opened', async () => {
    // A proxy that forwards plain requests but refuses every upgrade (as some proxies do).
    const proxy = http.createServer((req, res) => {
      const target = new URL(d.url);
      const out = http.request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      });
      out.on('error', () => res.destroy());
      req.pipe(out);
    });
    proxy.on('upgrade', (_req, socket: net.Socket) => {
      socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    const via = { apiUrl: `http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`, apiKey: d.adminKey! };
    try {
      await withPair(async (ch, rest) => {
        const a = await ch.commands.run('echo via-http; exit 4');
        const b = await rest.commands.run('echo via-http; exit 4');
        assert.deepEqual(withoutPid(a), withoutPid(b));
        assert.equal(a.stdout, 'via-http\n');
        const channel = ch.commands.commandChannel!;
        assert.equal(channel.connected, false);
        assert.equal(channel.opened, 0);
        // Remembered for a while: the next runs do not try again.
        assert.equal((await ch.commands.run(['true'])).exitCode, 0);
        assert.equal(channel.opened, 0);
      }, via);
    } finally {
      proxy.closeAllConnections();
      await new Promise((r) => proxy.close(r));
    }
  });

  it('reconnects after the daemon closes the channel (daemon restart)', async () => {
    const dir = traversable();
    const envKey = process.env.CAPSULE_API_KEY;
    let d2 = await startTestDaemon({ dataDir: dir });
    const port = new URL(d2.url).port;
    const c2 = { apiUrl: d2.url, apiKey: d2.adminKey! };
    const sbx = await Sandbox.create({ ...c2, template: 'busybox' });
    try {
      assert.equal((await sbx.commands.run('echo before')).stdout, 'before\n');
      const channel = sbx.commands.commandChannel!;
      assert.equal(channel.opened, 1);
      // A run in flight when the daemon goes fails as a broken HTTP request would (never sent twice).
      const inFlight = errorOf(sbx.commands.run('sleep 30'));
      await new Promise((r) => setTimeout(r, 300));
      await d2.stop({ keepSandboxes: true, removeDataDir: false });
      const lost = await inFlight;
      assert.ok(lost instanceof UnavailableError, String(lost));
      assert.equal(channel.connected, false);
      d2 = await startTestDaemon({ dataDir: dir, args: ['--port', port] });
      assert.equal(d2.url, c2.apiUrl);
      const after = await sbx.commands.run('echo after');
      assert.equal(after.stdout, 'after\n');
      assert.equal(channel.opened, 2, 'a new socket was opened');
      assert.equal(channel.connected, true);
    } finally {
      await sbx.kill().catch(() => {});
      await d2.stop({ removeDataDir: false });
      await removeDataDir(dir);
      process.env.CAPSULE_API_KEY = envKey;
    }
  });

  it('leaves no socket or listener behind after close() and kill(), and never holds the process open', async () => {
    const quiet = new AbortController();
    const sbx = await Sandbox.create({ ...conn, template: 'busybox', signal: quiet.signal });
    const channel = sbx.commands.commandChannel!;
    await Promise.all([sbx.commands.run(['true']), sbx.commands.run(['true'])]);
    assert.equal(getEventListeners(quiet.signal, 'abort').length, 0, 'no abort listener left per run');
    assert.equal(channel.connected, true);
    sbx.close();
    assert.equal(channel.connected, false);
    // Still usable after close(): over HTTP.
    assert.equal((await sbx.commands.run('echo http')).stdout, 'http\n');
    assert.equal(channel.connected, false);
    assert.equal(channel.opened, 1);

    // Aborting the connection's signal kills the command on the channel and rejects with an AbortError.
    const ac = new AbortController();
    const other = await Sandbox.connect(sbx.id, { ...conn, signal: ac.signal });
    await other.commands.run(['true']);
    assert.equal(other.commands.commandChannel!.connected, true);
    const running = other.commands.run('sleep 30');
    await new Promise((r) => setTimeout(r, 300));
    ac.abort();
    const aborted = await errorOf(running);
    assert.equal(aborted?.name, 'AbortError');
    assert.equal(getEventListeners(ac.signal, 'abort').length, 0);
    let alive = true;
    for (let i = 0; i < 50 && alive; i++) {
      alive = (await sbx.commands.list()).some((p) => p.running && p.cmd.includes('sleep 30'));
      if (alive) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(alive, false, 'the cancelled command was killed');
    other.close();
    assert.equal(other.commands.commandChannel!.connected, false);

    // kill() closes the channel too.
    const third = await Sandbox.connect(sbx.id, conn);
    await third.commands.run(['true']);
    assert.equal(third.commands.commandChannel!.connected, true);
    await third.kill();
    assert.equal(third.commands.commandChannel!.connected, false);

    // A program that runs a command and never calls close() still exits at once.
    const box = await Sandbox.create({ ...conn, template: 'busybox' });
    try {
      const script = path.join(dataDir, 'no-close.mjs');
      const sdk = path.join(REPO_ROOT, 'dist', 'src', 'sdk', 'index.js');
      fs.writeFileSync(
        script,
        `import { Sandbox } from ${JSON.stringify(sdk)};\n` +
          `const s = await Sandbox.connect(${JSON.stringify(box.id)}, ${JSON.stringify(conn)});\n` +
          `const r = await s.commands.run('echo done');\n` +
          `if (!s.commands.commandChannel.connected) throw new Error('not over the channel');\n` +
          `process.stdout.write(r.stdout);\n`,
      );
      const t0 = Date.now();
      const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'], env: process.env });
      let out = '';
      child.stdout.on('data', (b: Buffer) => (out += b.toString()));
      const code = await new Promise<number | null>((resolve) => {
        const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
        child.once('exit', (c) => {
          clearTimeout(t);
          resolve(c);
        });
      });
      assert.equal(code, 0);
      assert.equal(out, 'done\n');
      assert.ok(Date.now() - t0 < 5000, `exited after ${Date.now() - t0} ms`);
    } finally {
      await box.kill().catch(() => {});
    }
  });
});
