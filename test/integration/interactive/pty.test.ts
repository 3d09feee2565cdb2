/**
 * Terminals through the SDK against a real daemon and real crun sandboxes:
 * size and resize, ^C and job control, a REPL, all 256 byte values, leaving
 * and reattaching, tags, and the answer an old agent gets.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import WebSocket from 'ws';
import { api, authHeaders } from '../../helpers/daemon.js';
import { sandboxFixture } from '../../helpers/sandbox-fixture.js';
import { ConflictError, InvalidArgumentError, NotFoundError, Sandbox, UnsupportedError } from '../../../src/sdk/index.js';
import { buildAgentVariant, AGENT_BINARY } from '../../unit/agent/helpers.js';
import { Screen } from './terminal.js';

describe('terminals (pty)', () => {
  const f = sandboxFixture();

  it('runs a login shell with TERM=xterm-256color at the size asked for, and resizes', async () => {
    const s = new Screen();
    const term = await f.sbx.pty.create({ cols: 101, rows: 33, onData: s.onData });
    await term.sendInput('echo "term=$TERM"; stty size\n');
    await s.until(/term=xterm-256color\r\n33 101\r\n/);
    await term.resize({ cols: 132, rows: 50 });
    const m = s.mark();
    await term.sendInput('stty size\n');
    await s.until(/50 132\r\n/, m);
    // Resize without a connection, through REST, works the same.
    await f.sbx.pty.resize(term.pid, { cols: 90, rows: 20 });
    const m2 = s.mark();
    await term.sendInput('stty size; exit 3\n');
    await s.until(/20 90\r\n/, m2);
    assert.deepEqual(await term.wait(), { exitCode: 3 });
  });

  it('Ctrl-C stops the foreground job; the shell stays', async () => {
    const s = new Screen();
    const term = await f.sbx.pty.create({ onData: s.onData });
    await term.sendInput('sleep 100\n');
    await new Promise((r) => setTimeout(r, 500));
    const t0 = Date.now();
    await term.sendInput('\x03');
    const m = s.mark();
    await term.sendInput('echo "after=$?"\n');
    await s.until(/after=130/, m);
    assert.ok(Date.now() - t0 < 5000, 'sleep 100 was interrupted');
    await term.sendInput('exit\n');
    assert.equal((await term.wait()).exitCode, 0);
  });

  // busybox has no python3: its interactive calculator-like REPL stand-in is `bc`-less, so we use `sh -i`
  // reading line by line here, and python3 in the debian template below when it is cached.
  it('an interactive program answers input line by line (busybox: sh reading with read)', async () => {
    const s = new Screen();
    const term = await f.sbx.pty.create({ cmd: ['/bin/sh', '-c', 'while read -r line; do echo "got<$line>"; done'], onData: s.onData });
    await term.sendInput('hello\n');
    await s.until(/got<hello>/);
    await term.sendInput('world\n');
    await s.until(/got<world>/);
    await term.sendInput('\x04'); // ^D: end of input in canonical mode
    assert.equal((await term.wait()).exitCode, 0);
  });

  it('the python3 REPL answers input (debian template)', async (t) => {
    const cached = process.env.CAPSULE_TEMPLATE_CACHE ?? '/var/cache/capsule-test';
    if (!fs.existsSync(path.join(cached, 'debian-rootfs.tar'))) {
      t.skip(`the debian template is not cached in ${cached}; building it takes ~75 s (test/integration/templates/debian.test.ts builds it)`);
      return;
    }
    const deb = await Sandbox.create({ ...f.conn, template: 'debian' });
    try {
      const s = new Screen();
      const term = await deb.pty.create({ cmd: ['python3', '-q'], onData: s.onData });
      await s.until(/>>> /);
      await term.sendInput('6*7\n');
      await s.until(/\r\n42\r\n>>> /);
      await term.sendInput('exit()\n');
      assert.equal((await term.wait()).exitCode, 0);
    } finally {
      await deb.kill();
    }
  });

  it('carries all 256 byte values both ways (raw mode)', async () => {
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    await f.sbx.files.write('/tmp/all.bin', all);
    const s = new Screen();
    const term = await f.sbx.pty.create({
      cmd: ['/bin/sh', '-c', 'stty raw -echo; printf R; head -c 256 > /tmp/in.bin; printf "<"; cat /tmp/all.bin; printf ">"'],
      onData: s.onData,
    });
    await s.until(/R/);
    await term.sendInput(all);
    assert.equal((await term.wait()).exitCode, 0);
    const out = Buffer.concat(s.bytes);
    assert.ok(out.subarray(out.indexOf('<') + 1, out.lastIndexOf('>')).equals(all), 'output bytes intact');
    assert.ok(Buffer.from(await f.sbx.files.read('/tmp/in.bin', { format: 'bytes' })).equals(all), 'input bytes intact');
  });

  it('keeps running without a client; a reconnect replays recent output, then live output', async () => {
    const s1 = new Screen();
    const term = await f.sbx.pty.create({ tag: 'console', onData: s1.onData });
    await term.sendInput('echo first-$((40+2))\n');
    await s1.until(/first-42\r\n/);
    term.disconnect();
    // Output while nobody is connected is kept (bounded) for the next client.
    await api(f.d.url, 'POST', `/v1/sandboxes/${f.sbx.id}/pty/${term.pid}/resize`, { cols: 70, rows: 10 });
    const listed = await f.sbx.commands.list({ tag: 'console' });
    assert.deepEqual(listed.map((p) => [p.pid, p.pty, p.running]), [[term.pid, true, true]]);
    const s2 = new Screen();
    const again = await f.sbx.pty.connect('console', { onData: s2.onData });
    assert.equal(again.pid, term.pid);
    assert.ok(again.replayBytes > 0 && again.replayBytes <= 64 * 1024);
    await s2.until(/first-42/); // the replay
    const m = s2.mark();
    await again.sendInput('echo later-$((6*7)); stty size\n');
    await s2.until(/later-42\r\n10 70\r\n/, m);
    // A tag is unique among running processes.
    await assert.rejects(f.sbx.pty.create({ tag: 'console', onData: () => undefined }), ConflictError);
    await f.sbx.pty.kill('console');
    assert.equal((await again.wait()).exitCode, 137);
  });

  it('refuses what is not a terminal, unknown processes, and bad control messages', async () => {
    const bg = await f.sbx.commands.run('sleep 30', { background: true });
    await assert.rejects(f.sbx.pty.connect(bg.pid, { onData: () => undefined }), InvalidArgumentError);
    await assert.rejects(f.sbx.pty.connect(999_999, { onData: () => undefined }), NotFoundError);
    await assert.rejects(f.sbx.pty.connect('no-such-tag', { onData: () => undefined }), NotFoundError);
    await bg.kill();
    // Without a key the upgrade is refused like any request.
    const noKey = await new Promise<number>((resolve) => {
      const ws = new WebSocket(`${f.d.url.replace('http', 'ws')}/v1/sandboxes/${f.sbx.id}/pty/1`);
      ws.on('unexpected-response', (_q, res) => resolve(res.statusCode ?? 0));
      ws.on('open', () => resolve(101));
      ws.on('error', () => undefined);
    });
    assert.equal(noKey, 401);
    // A bad control message is an error frame and a close with 4400; the terminal keeps running.
    const term = await f.sbx.pty.create({ onData: () => undefined });
    const closed = await new Promise<{ code: number; msg: string }>((resolve) => {
      const ws = new WebSocket(`${f.d.url.replace('http', 'ws')}/v1/sandboxes/${f.sbx.id}/pty/${term.pid}`, { headers: authHeaders(f.d.url) });
      let msg = '';
      ws.on('message', (data, bin) => {
        if (!bin && String(data).includes('error')) msg = String(data);
      });
      ws.on('open', () => ws.send(JSON.stringify({ type: 'resize', cols: 0 })));
      ws.on('close', (code) => resolve({ code, msg }));
    });
    assert.equal(closed.code, 4400);
    assert.match(closed.msg, /"code":"invalid_argument"/);
    assert.equal((await f.sbx.commands.list()).find((p) => p.pid === term.pid)?.running, true);
    await term.kill();
  });

  it('a sandbox whose agent predates terminals answers unsupported (422)', async () => {
    const variants = fs.mkdtempSync(path.join(path.dirname(f.dataDir), 'capsule-agent-variants-'));
    const target = path.join(f.dataDir, 'bin', 'capsule-agent');
    try {
      fs.copyFileSync(buildAgentVariant(variants, 'v1.1'), `${target}.tmp`);
      fs.chmodSync(`${target}.tmp`, 0o755);
      fs.renameSync(`${target}.tmp`, target);
      const old = await Sandbox.create({ ...f.conn, template: 'busybox' });
      try {
        await assert.rejects(old.pty.create({ onData: () => undefined }), (e: unknown) => e instanceof UnsupportedError && /does not support pty/.test((e as Error).message));
        await assert.rejects(old.files.watchDir('/tmp', () => undefined), (e: unknown) => e instanceof UnsupportedError && /does not support watch/.test((e as Error).message));
        assert.equal((await old.commands.run('echo ok')).stdout, 'ok\n', 'the rest still works');
      } finally {
        await old.kill();
      }
    } finally {
      fs.copyFileSync(AGENT_BINARY, `${target}.tmp`);
      fs.renameSync(`${target}.tmp`, target);
      fs.rmSync(variants, { recursive: true, force: true });
    }
  });
});
