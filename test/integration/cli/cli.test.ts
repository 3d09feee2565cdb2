/**
 * The `capsule` CLI (bin/capsule.js) against a real daemon. Every command
 * runs as a child process, the way a user runs it.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CLI, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';

let d: TestDaemon;
let dataDir: string;
let id: string;
let tmp: string;

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
}

/** Run `capsule ...args`; `input` is piped to stdin (otherwise stdin is /dev/null). */
function capsule(args: string[], opts: { input?: string | Buffer; env?: Record<string, string> } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      env: { ...process.env, CAPSULE_URL: d.url, ...opts.env },
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    child.once('error', reject);
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.once('close', (code) => {
      clearTimeout(timer);
      const stdoutBytes = Buffer.concat(out);
      resolve({ code, stdout: stdoutBytes.toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), stdoutBytes });
    });
  });
}

function show(r: CliResult): string {
  return `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
}

describe('cli', () => {
  before(async () => {
    // mkdtemp makes the directory 0700, which the sandbox's mapped root cannot traverse.
    dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir });
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-cli-'));
    const r = await capsule(['create', '--template', 'busybox', '--metadata', 'suite=cli']);
    assert.equal(r.code, 0, show(r));
    id = r.stdout.trim();
  });
  after(async () => {
    if (id) await capsule(['kill', id]).catch(() => {});
    await d?.stop();
    if (dataDir) await removeDataDir(dataDir);
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('create prints just the id', () => {
    assert.match(id, /^sbx-[a-z0-9]{12}$/);
  });

  it('exec streams stdout and stderr and exits with the command code', async () => {
    const r = await capsule(['exec', id, '--', 'sh', '-c', 'echo out; echo err >&2; exit 3']);
    assert.equal(r.code, 3, show(r));
    assert.equal(r.stdout, 'out\n');
    assert.equal(r.stderr, 'err\n');
  });

  it('exec keeps an argument with spaces as one argv element', async () => {
    const r = await capsule(['exec', id, '--cwd', '/tmp', '--env', 'X=1', '--', 'sh', '-c', 'printf "[%s]" "$0" "$X" "$(pwd)"', 'a b']);
    assert.equal(r.code, 0, show(r));
    assert.equal(r.stdout, '[a b][1][/tmp]');
  });

  it('exec feeds piped stdin to the command', async () => {
    const r = await capsule(['exec', id, '--', 'tr', 'a-z', 'A-Z'], { input: 'shout\n' });
    assert.equal(r.code, 0, show(r));
    assert.equal(r.stdout, 'SHOUT\n');
  });

  it('exec reports a signal death as 128+n', async () => {
    const r = await capsule(['exec', id, '--', 'sh', '-c', 'kill -TERM $$']);
    assert.equal(r.code, 143, show(r));
  });

  it('files write and read round-trip bytes', async () => {
    const data = Buffer.from(Array.from({ length: 1024 }, (_, i) => i % 256));
    const w = await capsule(['files', 'write', id, '/tmp/cli/data.bin'], { input: data });
    assert.equal(w.code, 0, show(w));
    const r = await capsule(['files', 'read', id, '/tmp/cli/data.bin']);
    assert.equal(r.code, 0, show(r));
    assert.deepEqual(r.stdoutBytes, data);
  });

  it('cp copies both ways', async () => {
    const local = path.join(tmp, 'up.txt');
    fs.writeFileSync(local, 'copied up\n'.repeat(1000));
    const up = await capsule(['cp', local, `${id}:/tmp/cli/up.txt`]);
    assert.equal(up.code, 0, show(up));
    const down = path.join(tmp, 'down.txt');
    const dn = await capsule(['cp', `${id}:/tmp/cli/up.txt`, down]);
    assert.equal(dn.code, 0, show(dn));
    assert.equal(fs.readFileSync(down, 'utf8'), fs.readFileSync(local, 'utf8'));

    const both = await capsule(['cp', local, down]);
    assert.equal(both.code, 2, show(both));
  });

  it('files ls, mkdir and rm', async () => {
    assert.equal((await capsule(['files', 'mkdir', id, '/tmp/cli-ls/sub'])).code, 0);
    assert.equal((await capsule(['files', 'write', id, '/tmp/cli-ls/f.txt'], { input: 'x' })).code, 0);
    const ls = await capsule(['files', 'ls', id, '/tmp/cli-ls', '--json']);
    assert.equal(ls.code, 0, show(ls));
    const entries = JSON.parse(ls.stdout) as Array<{ name: string; type: string }>;
    assert.deepEqual(entries.map((e) => `${e.name}:${e.type}`).sort(), ['f.txt:file', 'sub:dir']);
    const table = await capsule(['files', 'ls', id, '/tmp/cli-ls']);
    assert.match(table.stdout, /^d.*sub$/m);
    assert.equal((await capsule(['files', 'rm', id, '-r', '/tmp/cli-ls'])).code, 0);
    const gone = await capsule(['files', 'ls', id, '/tmp/cli-ls']);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /^capsule: not_found: /m);
  });

  it('list --json parses and filters by metadata', async () => {
    const r = await capsule(['list', '--json', '--metadata', 'suite=cli']);
    assert.equal(r.code, 0, show(r));
    const list = JSON.parse(r.stdout) as Array<{ id: string; state: string }>;
    assert.deepEqual(list.map((s) => s.id), [id]);
    const table = await capsule(['list']);
    assert.match(table.stdout, /^ID\s+TEMPLATE\s+STATE/);
    assert.ok(table.stdout.includes(id));
  });

  it('timeout and info', async () => {
    const r = await capsule(['timeout', id, '600', '--json']);
    assert.equal(r.code, 0, show(r));
    const info = JSON.parse(r.stdout) as { expiresAt: string };
    assert.ok(new Date(info.expiresAt).getTime() > Date.now() + 500_000);
  });

  it('create --disk-mb sets the disk quota: info shows it, df inside agrees; out of bounds fails', async () => {
    const c = await capsule(['create', '--template', 'busybox', '--disk-mb', '96', '--metadata', 'suite=cli']);
    assert.equal(c.code, 0, show(c));
    const small = c.stdout.trim();
    try {
      const info = await capsule(['info', small]);
      assert.match(info.stdout, /96 MiB disk/, show(info));
      const df = await capsule(['exec', small, '--', 'sh', '-c', 'df -k / | tail -n 1']);
      const kib = Number(df.stdout.trim().split(/\s+/)[1]);
      assert.ok(kib > 80 * 1024 && kib <= 96 * 1024, show(df));
    } finally {
      await capsule(['kill', small]);
    }
    const bad = await capsule(['create', '--template', 'busybox', '--disk-mb', '1']);
    assert.equal(bad.code, 1, show(bad));
    assert.match(bad.stderr, /invalid_argument/);
  });

  it('template list --json', async () => {
    const r = await capsule(['template', 'list', '--json']);
    assert.equal(r.code, 0, show(r));
    const templates = JSON.parse(r.stdout) as Array<{ name: string }>;
    assert.ok(templates.some((t) => t.name === 'busybox'));
  });

  it('a bad id exits 1 with not_found', async () => {
    const r = await capsule(['exec', 'sbx-000000000000', '--', 'true']);
    assert.equal(r.code, 1, show(r));
    assert.match(r.stderr, /^capsule: not_found: /m);
  });

  it('usage errors exit 2', async () => {
    assert.equal((await capsule(['create', '--env', 'novalue'])).code, 2);
    assert.equal((await capsule(['no-such-command'])).code, 2);
  });

  it('an unreachable daemon is reported as unavailable', async () => {
    const r = await capsule(['list'], { env: { CAPSULE_URL: 'http://127.0.0.1:9' } });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^capsule: unavailable: .*127\.0\.0\.1:9/m);
  });

  it('kill --json reports the killed sandbox', async () => {
    const c = await capsule(['create', '--template', 'busybox', '--json']);
    assert.equal(c.code, 0, show(c));
    const other = JSON.parse(c.stdout) as { id: string; state: string };
    assert.equal(other.state, 'running');
    const k = await capsule(['kill', other.id, '--json']);
    assert.equal(k.code, 0, show(k));
    assert.equal((JSON.parse(k.stdout) as { state: string }).state, 'killed');
  });
});
