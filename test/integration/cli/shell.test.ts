/**
 * `capsule shell` as a person uses it: in a real terminal (tmux), typing with
 * send-keys and reading the screen with capture-pane. The local size reaches
 * the sandbox and follows a resize (SIGWINCH), Ctrl-C stops a job and not the
 * shell, Ctrl-P Ctrl-Q detaches and `--attach` comes back, and the shell's
 * exit code is the command's.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { CLI, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { Sandbox } from '../../../src/sdk/index.js';

const hasTmux = spawnSync('tmux', ['-V']).status === 0;
const SESSION = `capsule-shell-test-${process.pid}`;
/**
 * Each window gets its own tmux server (socket): a new server started on the socket of one that is
 * still shutting down after kill-server fails with "server exited unexpectedly".
 */
let server = SESSION;
let servers = 0;

function tmux(...args: string[]): string {
  return execFileSync('tmux', ['-L', server, ...args], { encoding: 'utf8' });
}

/** The visible screen (and some scrollback). */
function screen(): string {
  return tmux('capture-pane', '-p', '-J', '-S', '-200', '-t', SESSION);
}

async function waitScreen(re: RegExp, ms = 15_000): Promise<string> {
  const deadline = Date.now() + ms;
  for (;;) {
    const s = screen();
    if (re.test(s)) return s;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${re}; the screen:\n${s}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function keys(...k: string[]): void {
  tmux('send-keys', '-t', SESSION, ...k);
}

describe('capsule shell (under tmux)', { skip: hasTmux ? false : 'tmux is not installed (scripts/setup.sh installs it)' }, () => {
  let d: TestDaemon;
  let dataDir: string;
  let sbx: Sandbox;

  before(async () => {
    dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir });
    sbx = await Sandbox.create({ apiUrl: d.url, template: 'busybox' });
  });
  after(async () => {
    spawnSync('tmux', ['-L', server, 'kill-server']);
    await sbx?.kill().catch(() => {});
    await d?.stop();
    if (dataDir) await removeDataDir(dataDir);
  });

  /** A tmux window running a shell of ours, so the CLI's exit code can be printed after it. */
  function open(cols: number, rows: number): void {
    spawnSync('tmux', ['-L', server, 'kill-server']);
    server = `${SESSION}-${++servers}`;
    execFileSync('tmux', ['-L', server, '-f', '/dev/null', 'new-session', '-d', '-s', SESSION, '-x', String(cols), '-y', String(rows), 'sh'], {
      env: { ...process.env, CAPSULE_URL: d.url, CAPSULE_API_KEY: d.adminKey ?? '', PS1: 'host$ ' },
    });
  }

  it('a login shell at the terminal size that follows resizes; Ctrl-C stops a job; the exit code is the shell\'s', async () => {
    open(100, 30);
    keys(`${process.execPath} ${CLI} shell ${sbx.id}; echo "EXIT=$?"`, 'Enter');
    await waitScreen(/~ # /);
    keys('stty size; echo "term=$TERM"', 'Enter');
    await waitScreen(/30 100\s+term=xterm-256color/);
    tmux('resize-window', '-t', SESSION, '-x', '120', '-y', '40');
    await new Promise((r) => setTimeout(r, 300));
    keys('clear; stty size', 'Enter');
    await waitScreen(/40 120/);
    keys('sleep 100', 'Enter');
    await new Promise((r) => setTimeout(r, 500));
    keys('C-c');
    keys('echo "after=$?"', 'Enter');
    await waitScreen(/after=130/);
    keys('exit 7', 'Enter');
    await waitScreen(/EXIT=7/);
  });

  it('Ctrl-P Ctrl-Q detaches and leaves the shell running; --attach comes back to it', async () => {
    open(90, 25);
    keys(`${process.execPath} ${CLI} shell ${sbx.id} --tag console; echo "EXIT=$?"`, 'Enter');
    await waitScreen(/~ # /);
    keys('echo marker-$((6*7))', 'Enter');
    await waitScreen(/marker-42/);
    keys('C-p', 'C-q');
    await waitScreen(/detached; the terminal keeps running: capsule shell \S+ --attach console[\s\S]*EXIT=0/);
    const listed = await sbx.commands.list({ tag: 'console' });
    assert.equal(listed[0]?.running, true);
    keys('clear', 'Enter');
    keys(`${process.execPath} ${CLI} shell ${sbx.id} --attach console; echo "EXIT=$?"`, 'Enter');
    await waitScreen(/marker-42/); // the replay of recent output
    keys('echo back-$((7*7)); exit 0', 'Enter');
    await waitScreen(/back-49[\s\S]*EXIT=0/);
  });
});
