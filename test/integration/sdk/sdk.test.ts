/**
 * The TypeScript SDK against a real daemon (`capsule serve` in a child
 * process) and real busybox sandboxes. Nothing is mocked.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import {
  CapsuleError,
  InvalidArgumentError,
  NotFoundError,
  Sandbox,
  Template,
  TimeoutError,
  UnavailableError,
  type ConnectionOptions,
} from '../../../src/sdk/index.js';

let d: TestDaemon;
let dataDir: string;
let conn: ConnectionOptions;
let sbx: Sandbox;
const GHOST = 'sbx-000000000000';

/** Fixture: a sandbox that is always killed, with its id in the failure message. */
async function withSandbox<T>(opts: Parameters<typeof Sandbox.create>[0], fn: (s: Sandbox) => Promise<T>): Promise<T> {
  const s = await Sandbox.create({ ...conn, template: 'busybox', ...opts });
  try {
    return await fn(s);
  } catch (e) {
    if (e instanceof Error) e.message = `[sandbox ${s.id}] ${e.message}`;
    throw e;
  } finally {
    await s.kill().catch(() => {});
  }
}

describe('sdk', () => {
  before(async () => {
    // mkdtemp makes the directory 0700, which the sandbox's mapped root cannot traverse.
    dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir });
    conn = { apiUrl: d.url };
    sbx = await Sandbox.create({ ...conn, template: 'busybox', metadata: { suite: 'sdk' } });
  });
  after(async () => {
    await sbx?.kill().catch(() => {});
    await d?.stop();
    if (dataDir) await removeDataDir(dataDir);
  });

  describe('sandboxes', () => {
    it('creates, connects, lists by metadata and kills', async () => {
      const tag = `t${Date.now()}`;
      await withSandbox({ metadata: { tag, role: 'a' } }, async (a) => {
        assert.match(a.id, /^sbx-[a-z0-9]{12}$/);
        assert.equal(await a.isRunning(), true);
        const info = await a.getInfo();
        assert.equal(info.template, 'busybox');
        assert.deepEqual(info.metadata, { tag, role: 'a' });

        const again = await Sandbox.connect(a.id, conn);
        assert.equal(again.id, a.id);

        const listed = await Sandbox.list({ ...conn, metadata: { tag } });
        assert.deepEqual(listed.map((s) => s.id), [a.id]);
        assert.deepEqual(await Sandbox.list({ ...conn, metadata: { tag, role: 'b' } }), []);

        const before = new Date(info.expiresAt).getTime();
        const extended = await a.setTimeout(10 * 60_000);
        assert.ok(new Date(extended.expiresAt).getTime() > before);

        const killed = await a.kill();
        assert.equal(killed.state, 'killed');
        assert.equal(await a.isRunning(), false);
        // Killing again is fine.
        assert.equal((await a.kill()).state, 'killed');
        assert.deepEqual(await Sandbox.list({ ...conn, metadata: { tag } }), []);
        const all = await Sandbox.list({ ...conn, metadata: { tag }, state: 'all' });
        assert.deepEqual(all.map((s) => s.id), [a.id]);
      });
    });

    it('passes sandbox envs to commands', async () => {
      await withSandbox({ envs: { GREETING: 'hello there' } }, async (s) => {
        const r = await s.commands.run('echo "$GREETING"');
        assert.equal(r.stdout, 'hello there\n');
      });
    });

    it('throws NotFoundError for an unknown sandbox', async () => {
      await assert.rejects(Sandbox.connect(GHOST, conn), NotFoundError);
      await assert.rejects(Sandbox.connect(GHOST, conn), (e: unknown) => e instanceof CapsuleError && e.code === 'not_found');
    });

    it('throws InvalidArgumentError for bad input', async () => {
      await assert.rejects(Sandbox.create({ ...conn, template: 'busybox', timeoutMs: 5 }), InvalidArgumentError);
      await assert.rejects(Sandbox.create({ ...conn, template: 'busybox', envs: { 'A=B': 'x' } }), InvalidArgumentError);
      await assert.rejects(sbx.commands.run(''), InvalidArgumentError);
      await assert.rejects(sbx.setTimeout(1), InvalidArgumentError);
    });

    it('throws UnavailableError naming the URL when no daemon listens', async () => {
      await assert.rejects(Sandbox.list({ apiUrl: 'http://127.0.0.1:9' }), (e: unknown) => {
        assert.ok(e instanceof UnavailableError);
        assert.match(e.message, /127\.0\.0\.1:9/);
        return true;
      });
    });

    it('lists templates', async () => {
      const templates = await Template.list(conn);
      const busybox = templates.find((t) => t.name === 'busybox');
      assert.ok(busybox, JSON.stringify(templates));
      assert.equal(busybox.status, 'ready');
    });
  });

  describe('commands', () => {
    it('returns non-zero exit codes instead of throwing', async () => {
      const r = await sbx.commands.run('echo out; echo err >&2; exit 3');
      assert.equal(r.exitCode, 3);
      assert.equal(r.stdout, 'out\n');
      assert.equal(r.stderr, 'err\n');
      assert.ok(r.pid > 0);
    });

    it('runs an argv without a shell', async () => {
      const r = await sbx.commands.run(['echo', 'a  b', '$HOME']);
      assert.equal(r.stdout, 'a  b $HOME\n');
    });

    it('takes cwd, envs and stdin', async () => {
      const r = await sbx.commands.run('pwd; echo "$X"; cat', { cwd: '/tmp', envs: { X: 'ex' }, stdin: 'from stdin' });
      assert.equal(r.stdout, '/tmp\nex\nfrom stdin');
    });

    it('streams output to callbacks in order', async () => {
      const seen: string[] = [];
      const r = await sbx.commands.run('for i in 1 2 3; do echo o$i; echo e$i >&2; sleep 0.1; done; exit 4', {
        onStdout: (d) => void seen.push(`out:${d}`),
        onStderr: (d) => void seen.push(`err:${d}`),
      });
      assert.equal(r.exitCode, 4);
      assert.equal(r.stdout, 'o1\no2\no3\n');
      assert.equal(r.stderr, 'e1\ne2\ne3\n');
      // The sleeps separate the rounds, so each round's output arrives before the next one's.
      const rounds = seen.map((c) => Number(/\d/.exec(c)?.[0]));
      assert.deepEqual(rounds, [...rounds].sort(), `out of order: ${JSON.stringify(seen)}`);
      assert.deepEqual(seen.filter((c) => c.startsWith('out:')).join('').replace(/out:/g, ''), 'o1\no2\no3\n');
    });

    it('bounds a streamed result to maxOutputBytes but gives callbacks everything', async () => {
      let total = 0;
      const r = await sbx.commands.run('head -c 5000 /dev/zero | tr "\\0" x', {
        maxOutputBytes: 1000,
        onStdout: (d) => {
          total += d.length;
        },
      });
      assert.equal(total, 5000);
      assert.equal(r.stdout.length, 1000);
      assert.equal(r.stdoutTruncated, true);
    });

    it('reports a timeout as a result, not an error', async () => {
      const r = await sbx.commands.run('sleep 10', { timeoutMs: 300 });
      assert.equal(r.timedOut, true);
      assert.notEqual(r.exitCode, 0);
    });

    it('kills the process when a streaming run is aborted', async () => {
      const ac = new AbortController();
      const marker = `abort-${Date.now()}`;
      const p = sbx.commands.run(['sh', '-c', `echo started; exec sleep 30 # ${marker}`], {
        signal: ac.signal,
        onStdout: () => ac.abort(),
      });
      await assert.rejects(p, (e: unknown) => e instanceof Error && e.name === 'AbortError');
      // The process is gone (killed by the SDK, or by the daemon when the stream closed).
      const deadline = Date.now() + 5000;
      for (;;) {
        const procs = await sbx.commands.list();
        const mine = procs.filter((p) => p.cmd.join(' ').includes(marker));
        if (mine.every((p) => !p.running)) break;
        assert.ok(Date.now() < deadline, `still running: ${JSON.stringify(mine)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    });

    it('runs in the background: wait, stdin, kill, signal', async () => {
      const h = await sbx.commands.run('cat; echo done', { background: true });
      assert.ok(h.pid > 0);
      const listed = await sbx.commands.list();
      assert.ok(listed.some((p) => p.pid === h.pid && p.running));
      await h.sendStdin('line one\n');
      await h.sendStdin(new TextEncoder().encode('bytes\n'), { eof: true });
      const r = await h.wait({ timeoutMs: 10_000 });
      assert.equal(r.exitCode, 0);
      assert.equal(r.stdout, 'line one\nbytes\ndone\n');

      const sleeper = await sbx.commands.run('sleep 30', { background: true });
      await assert.rejects(sleeper.wait({ timeoutMs: 200 }), TimeoutError);
      await sleeper.kill();
      const killed = await sleeper.wait({ timeoutMs: 10_000 });
      assert.equal(killed.exitCode, 137);

      const term = await sbx.commands.run(['sleep', '30'], { background: true });
      await term.signal('SIGTERM');
      assert.equal((await term.wait({ timeoutMs: 10_000 })).exitCode, 143);
    });

    it('follows background output with callbacks and connect()', async () => {
      const chunks: string[] = [];
      const h = await sbx.commands.run('echo one; sleep 0.2; echo two', {
        background: true,
        onStdout: (d) => void chunks.push(d),
      });
      const r = await h.wait();
      assert.equal(r.stdout, 'one\ntwo\n');
      assert.equal(chunks.join(''), 'one\ntwo\n');

      // connect() replays what was buffered, then follows.
      const replay: string[] = [];
      const again = await sbx.commands.connect(h.pid, { onStdout: (d) => void replay.push(d) });
      await again.wait();
      assert.equal(replay.join(''), 'one\ntwo\n');

      await assert.rejects(sbx.commands.connect(999_999), NotFoundError);
    });

    it('kill() and sendStdin() by pid', async () => {
      const h = await sbx.commands.run('read x; echo "got $x"', { background: true });
      await sbx.commands.sendStdin(h.pid, 'hi\n');
      assert.equal((await h.wait({ timeoutMs: 10_000 })).stdout, 'got hi\n');
      const s = await sbx.commands.run('sleep 30', { background: true });
      await sbx.commands.kill(s.pid);
      assert.equal((await s.wait({ timeoutMs: 10_000 })).exitCode, 137);
    });
  });

  describe('files', () => {
    it('writes and reads text and binary', async () => {
      const w = await sbx.files.write('/tmp/sdk/hello.txt', 'héllo\n');
      assert.deepEqual(w, { path: '/tmp/sdk/hello.txt', size: Buffer.byteLength('héllo\n') });
      assert.equal(await sbx.files.read('/tmp/sdk/hello.txt'), 'héllo\n');

      const bin = new Uint8Array(256 * 3).map((_, i) => i % 256);
      await sbx.files.write('/tmp/sdk/bin', bin);
      assert.deepEqual(await sbx.files.read('/tmp/sdk/bin', { format: 'bytes' }), bin);
      await sbx.files.write('/tmp/sdk/ab', bin.buffer);
      await sbx.files.write('/tmp/sdk/blob', new Blob([bin]));
      assert.equal((await sbx.files.stat('/tmp/sdk/blob')).size, bin.byteLength);

      const r = await sbx.commands.run('md5sum /tmp/sdk/bin /tmp/sdk/ab | cut -d" " -f1 | uniq | wc -l');
      assert.equal(r.stdout.trim(), '1');
    });

    it('streams uploads and downloads', async () => {
      const chunk = Buffer.alloc(64 * 1024, 'z');
      const count = 40;
      async function* gen() {
        for (let i = 0; i < count; i++) yield chunk;
      }
      const res = await sbx.files.write('/tmp/sdk/big', Readable.from(gen()), { mode: 0o600 });
      assert.equal(res.size, chunk.length * count);
      const st = await sbx.files.stat('/tmp/sdk/big');
      assert.equal(st.mode & 0o777, 0o600);

      const web = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(new TextEncoder().encode('web '));
          c.enqueue(new TextEncoder().encode('stream'));
          c.close();
        },
      });
      await sbx.files.write('/tmp/sdk/web', web);
      assert.equal(await sbx.files.read('/tmp/sdk/web'), 'web stream');

      const stream = await sbx.files.read('/tmp/sdk/big', { format: 'stream' });
      let total = 0;
      for await (const part of stream as unknown as AsyncIterable<Uint8Array>) total += part.byteLength;
      assert.equal(total, chunk.length * count);
    });

    it('lists, stats, checks existence, renames and removes', async () => {
      await sbx.files.makeDir('/tmp/sdk-dir/sub');
      await sbx.files.write('/tmp/sdk-dir/a.txt', 'a');
      await sbx.files.write('/tmp/sdk-dir/b.txt', 'bb');
      const entries = await sbx.files.list('/tmp/sdk-dir');
      assert.deepEqual(entries.map((e) => e.name).sort(), ['a.txt', 'b.txt', 'sub']);
      assert.equal(entries.find((e) => e.name === 'sub')?.type, 'dir');
      assert.equal(entries.find((e) => e.name === 'b.txt')?.size, 2);

      const limited = await sbx.files.listDetailed('/tmp/sdk-dir', { limit: 1 });
      assert.equal(limited.entries.length, 1);
      assert.equal(limited.truncated, true);

      assert.equal(await sbx.files.exists('/tmp/sdk-dir/a.txt'), true);
      assert.equal(await sbx.files.exists('/tmp/sdk-dir/nope'), false);

      await sbx.files.rename('/tmp/sdk-dir/a.txt', '/tmp/sdk-dir/sub/c.txt');
      assert.equal(await sbx.files.exists('/tmp/sdk-dir/a.txt'), false);
      assert.equal(await sbx.files.read('/tmp/sdk-dir/sub/c.txt'), 'a');

      await sbx.files.remove('/tmp/sdk-dir/b.txt');
      assert.equal(await sbx.files.exists('/tmp/sdk-dir/b.txt'), false);
      await sbx.files.remove('/tmp/sdk-dir', { recursive: true });
      assert.equal(await sbx.files.exists('/tmp/sdk-dir'), false);
    });

    it('maps file errors to typed errors', async () => {
      await assert.rejects(sbx.files.read('/does/not/exist'), NotFoundError);
      await assert.rejects(sbx.files.stat('/does/not/exist'), NotFoundError);
      await assert.rejects(sbx.files.write('/tmp/x', 'x', { mode: '999' }), InvalidArgumentError);
    });
  });
});
