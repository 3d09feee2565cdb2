/**
 * The launcher (native/capsule-launcher.c + src/runtime/launcher.ts) with
 * ordinary commands: output, exit codes, signals, missing binaries, the
 * listening socket on fd 3, commands whose children keep stdio open,
 * timeouts, concurrency, and reaping of re-parented orphans.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { Launcher } from '../../../src/runtime/launcher.js';
import { REPO_ROOT } from '../../helpers/serve.js';

const BIN = path.join(REPO_ROOT, 'dist', 'native', 'capsule-launcher');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-launcher-'));
const l = new Launcher(BIN);
after(async () => {
  await l.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Direct children of a process, from /proc. */
function children(pid: number): number[] {
  const out: number[] = [];
  for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
    const text = fs.readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim();
    if (text) out.push(...text.split(' ').map(Number));
  }
  return out;
}

function state(pid: number): string {
  try {
    return /^State:\s+(\S)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '?';
  } catch {
    return 'gone';
  }
}

describe('launcher', () => {
  test('runs a command and returns its stdout, stderr and exit code', async () => {
    const r = await l.run(['sh', '-c', 'echo out; echo err >&2; exit 3'], { captureStdout: true });
    assert.equal(r.code, 3);
    assert.equal(r.signal, null);
    assert.equal(r.stdout, 'out\n');
    assert.equal(r.stderr, 'err\n');
  });

  test('stdout goes to /dev/null unless asked for', async () => {
    const r = await l.run(['sh', '-c', 'echo out; exec 3>&1; readlink /proc/self/fd/3 >&2']);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr, '/dev/null\n');
  });

  test('reports a signal death', async () => {
    const r = await l.run(['sh', '-c', 'kill -TERM $$']);
    assert.equal(r.code, null);
    assert.equal(r.signal, 'SIGTERM');
  });

  test('a missing binary rejects with a clear error', async () => {
    await assert.rejects(l.run(['/nonexistent/tool']), /cannot run \/nonexistent\/tool: not found/);
  });

  test('listenPath: fd 3 is a listening unix socket at that path, owner-only, and nothing else leaks', async () => {
    const sock = path.join(tmp, 'agent.sock');
    const r = await l.run(['sh', '-c', 'readlink /proc/self/fd/3; ls /proc/self/fd | sort -n | tr "\\n" " "'], { captureStdout: true, listenPath: sock });
    assert.match(r.stdout, /^socket:\[\d+\]\n0 1 2 3 \d+ $/, r.stdout); // the last one is ls's own directory fd
    assert.equal(fs.statSync(sock).mode & 0o777, 0o600);
    // The launcher keeps no copy: once the command exited, nobody listens.
    await assert.rejects(
      new Promise((resolve, reject) => net.connect(sock).on('connect', resolve).on('error', reject)),
      /ECONNREFUSED/,
    );
  });

  test('stderrToFile: a command whose child keeps stdio open still completes at its own exit', async () => {
    const t0 = performance.now();
    const r = await l.run(['sh', '-c', 'sleep 1 & echo started >&2'], { stderrToFile: true });
    assert.equal(r.code, 0);
    assert.equal(r.stderr, 'started\n');
    assert.ok(performance.now() - t0 < 900, 'did not wait for the background child');
  });

  test('re-parented orphans are reaped (the launcher is a subreaper)', async () => {
    const r = await l.run(['sh', '-c', 'sleep 0.3 >/dev/null 2>&1 & echo $!'], { captureStdout: true, stderrToFile: true });
    const orphan = Number(r.stdout.trim());
    assert.ok(l.pid);
    assert.ok(children(l.pid).includes(orphan), 'the orphan was re-parented to the launcher');
    await new Promise((res) => setTimeout(res, 600));
    assert.equal(state(orphan), 'gone', 'no zombie left behind');
  });

  test('a timeout kills the command', async () => {
    const t0 = performance.now();
    await assert.rejects(l.run(['sleep', '10'], { timeoutMs: 200 }), /timed out after 200 ms/);
    assert.ok(performance.now() - t0 < 3000);
  });

  test('an abort kills the command', async () => {
    const ac = new AbortController();
    const p = l.run(['sleep', '10'], { signal: ac.signal });
    setTimeout(() => ac.abort(), 100);
    await assert.rejects(p, /aborted/);
  });

  test('runs many commands at once and matches every answer to its request', async () => {
    const rs = await Promise.all(Array.from({ length: 100 }, (_, i) => l.run(['sh', '-c', `echo ${i}`], { captureStdout: true })));
    rs.forEach((r, i) => assert.equal(r.stdout, `${i}\n`));
  });

  test('bounds a huge output at 1 MiB without stalling', async () => {
    const r = await l.run(['sh', '-c', 'head -c 5000000 /dev/zero'], { captureStdout: true });
    assert.equal(r.code, 0);
    assert.equal(r.stdout.length, 1 << 20);
  });

  test('comes back after the launcher process dies', async () => {
    const pid = l.pid!;
    process.kill(pid, 'SIGKILL');
    await new Promise((res) => setTimeout(res, 100));
    const r = await l.run(['echo', 'again'], { captureStdout: true });
    assert.equal(r.stdout, 'again\n');
    assert.notEqual(l.pid, pid);
  });
});

describe('launcher: send buffer of the daemon\'s unix sockets', () => {
  /** SO_SNDBUF of one of this process's sockets, as `ss` reports it (tb, already doubled by the kernel). */
  function sndbuf(fd: number): number | undefined {
    const out = spawnSync('ss', ['-xmpH'], { encoding: 'utf8' }).stdout;
    const lines = out.split('\n');
    for (let i = 0; i < lines.length; i++) {
      if (!lines[i]!.includes(`pid=${process.pid},fd=${fd})`)) continue;
      const m = /tb(\d+)/.exec(lines[i]! + (lines[i + 1] ?? ''));
      if (m) return Number(m[1]);
    }
    return undefined;
  }

  test('sets SO_SNDBUF on a unix socket of its parent, and refuses anything else', async (t) => {
    if (spawnSync('ss', ['-V']).status !== 0) return t.skip('needs ss (iproute2) to read socket buffers');
    const sockPath = path.join(tmp, 'sndbuf.sock');
    const server = net.createServer(() => undefined).listen(sockPath);
    await new Promise((r) => server.once('listening', r));
    const client = net.createConnection(sockPath);
    await new Promise((r) => client.once('connect', r));
    try {
      const fd = (client as unknown as { _handle: { fd: number } })._handle.fd;
      const before = sndbuf(fd);
      assert.ok(before !== undefined && before < 1 << 20, `default send buffer ${before}`);
      await l.setSendBuffer(fd, 1 << 20);
      assert.equal(sndbuf(fd), 2 << 20, 'the kernel doubles what was asked');
      const file = fs.openSync(path.join(tmp, 'not-a-socket'), 'w');
      try {
        await assert.rejects(l.setSendBuffer(file, 1 << 20), /errno 88/); // ENOTSOCK
      } finally {
        fs.closeSync(file);
      }
      await assert.rejects(l.setSendBuffer(9999, 1 << 20), /errno 9/); // EBADF: no such descriptor
    } finally {
      client.destroy();
      server.close();
    }
  });
});
