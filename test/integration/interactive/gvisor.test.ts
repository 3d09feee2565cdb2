/**
 * What goes through the agent works the same on a gVisor sandbox (issue 16):
 * commands (foreground, background with a stream), a terminal (size, resize,
 * ^C), a file watch, metrics and the code interpreter, through the SDK
 * against a real daemon whose container sandboxes run next to it.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { settledLeftovers } from '../../helpers/leftovers.js';
import { Sandbox, UnsupportedError, type ConnectionOptions, type FilesystemEvent } from '../../../src/sdk/index.js';
import { Screen } from './terminal.js';

function gvisorSkip(): string | false {
  if (process.getuid?.() !== 0) return 'needs root';
  try {
    execFileSync('runsc', ['--version'], { stdio: 'ignore' });
    return false;
  } catch {
    return 'needs runsc (apt-get install runsc)';
  }
}

let d: TestDaemon;
let dataDir: string;
let conn: ConnectionOptions;
let sbx: Sandbox;

describe('agent features on gVisor', { skip: gvisorSkip(), timeout: 10 * 60_000 }, () => {
  before(async () => {
    dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir });
    conn = { apiUrl: d.url };
    sbx = await Sandbox.create({ ...conn, template: 'busybox', isolation: 'gvisor' });
    assert.equal((await sbx.getInfo()).isolation, 'gvisor');
  });
  after(async () => {
    const id = sbx?.id;
    await sbx?.kill().catch(() => {});
    if (id) assert.deepEqual(await settledLeftovers(id, dataDir), []);
    await d?.stop();
    if (dataDir) await removeDataDir(dataDir);
  });

  it('commands: foreground, and background with streamed output and stdin', async () => {
    const r = await sbx.commands.run('dmesg | head -1; echo out; echo err >&2; exit 4');
    assert.equal(r.exitCode, 4);
    assert.match(r.stdout, /gVisor/);
    assert.match(r.stdout, /out\n$/);
    assert.equal(r.stderr, 'err\n');
    const seen: string[] = [];
    const h = await sbx.commands.run('read -r line; echo "got $line"', { background: true, streamStdin: true, onStdout: (s) => void seen.push(s) });
    await h.sendStdin('hello\n');
    const done = await h.wait();
    assert.equal(done.exitCode, 0);
    assert.equal(seen.join(''), 'got hello\n');
  });

  it('a terminal: size, resize, input and exit; ^C is only bytes under this runsc (known gap, README)', async () => {
    const s = new Screen();
    const term = await sbx.pty.create({ cols: 101, rows: 33, onData: s.onData });
    await term.sendInput('echo "term=$TERM"; stty size\n');
    await s.until(/term=xterm-256color\r\n33 101\r\n/);
    await term.resize({ cols: 132, rows: 50 });
    let m = s.mark();
    await term.sendInput('stty size\n');
    await s.until(/50 132\r\n/, m);
    await term.sendInput('sleep 100\n');
    await new Promise((r) => setTimeout(r, 500));
    // runsc 0.0~20221219's line discipline has no ISIG: ^C reaches the input queue as a byte and no
    // SIGINT is sent. If this starts failing, runsc learnt it: drop the gap from README and ADR 0010.
    await term.sendInput('\x03');
    await new Promise((r) => setTimeout(r, 500));
    const running = await sbx.commands.run('ps | grep -c "[s]leep 100"');
    assert.equal(running.stdout, '1\n', 'the foreground job did not get SIGINT');
    // The workaround: signal it from a command (or the process API).
    m = s.mark();
    await sbx.commands.run('kill -INT $(pidof sleep)');
    await term.sendInput('echo "after=$?"; exit 3\n');
    await s.until(/after=130/, m);
    assert.deepEqual(await term.wait(), { exitCode: 3 });
  });

  it('a file watch sees create, write and remove', async () => {
    await sbx.commands.run('mkdir -p /work');
    const events: FilesystemEvent[] = [];
    const w = await sbx.files.watchDir('/work', (e) => void events.push(e));
    try {
      await sbx.commands.run('echo 1 > /work/f.txt; rm /work/f.txt');
      const has = (type: string) => events.some((e) => e.type === type && 'path' in e && e.path === 'f.txt');
      const deadline = Date.now() + 15_000;
      while (!(has('create') && has('write') && has('remove')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.ok(has('create') && has('write') && has('remove'), JSON.stringify(events));
    } finally {
      await w.stop();
    }
  });

  it('file metadata: works on tmpfs (/dev/shm); the gofer root file system has no user attributes: 422, nothing written', async () => {
    const w = await sbx.files.write('/dev/shm/meta/g.txt', 'g', { metadata: { Where: 'gvisor' } });
    assert.deepEqual(w.metadata, { where: 'gvisor' });
    assert.deepEqual((await sbx.files.stat('/dev/shm/meta/g.txt')).metadata, { where: 'gvisor' });
    assert.deepEqual((await sbx.files.list('/dev/shm/meta')).find((e) => e.name === 'g.txt')?.metadata, { where: 'gvisor' });
    await sbx.files.write('/dev/shm/meta/g.txt', 'g2');
    assert.equal((await sbx.files.stat('/dev/shm/meta/g.txt')).metadata, undefined);
    await assert.rejects(sbx.files.write('/tmp/g.txt', 'g', { metadata: { k: 'v' } }), (e: unknown) => e instanceof UnsupportedError && /extended attributes/.test((e as Error).message));
    assert.equal(await sbx.files.exists('/tmp/g.txt'), false);
    await sbx.files.write('/tmp/g.txt', 'plain');
    assert.equal((await sbx.files.stat('/tmp/g.txt')).metadata, undefined);
  });

  it('the code interpreter runs python cells with state (python template, when cached)', async (t) => {
    const cached = process.env.CAPSULE_TEMPLATE_CACHE ?? '/var/cache/capsule-test';
    if (!fs.existsSync(path.join(cached, 'python-rootfs.tar'))) {
      t.skip(`the python template is not cached in ${cached}`);
      return;
    }
    const py = await Sandbox.create({ ...conn, template: 'python', isolation: 'gvisor', timeoutMs: 5 * 60_000 });
    try {
      const a = await py.runCode('x = 21', { timeoutMs: 120_000 });
      assert.equal(a.error, undefined, JSON.stringify(a.error));
      const b = await py.runCode('x * 2');
      assert.equal(b.text, '42');
    } finally {
      await py.kill();
    }
  });
});
