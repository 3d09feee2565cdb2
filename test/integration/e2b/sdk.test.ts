/**
 * The E2B front door against a real daemon and real busybox sandboxes, driven only by E2B's own,
 * unmodified `e2b` SDK (pinned in package.json) over real HTTP: the SDK is pointed at Capsule by
 * E2B_API_URL and E2B_SANDBOX_URL, with a key from `capsule keys create --e2b`, exactly as a user
 * moving from E2B would. Raw fetches appear only where the SDK has no call for the thing checked
 * (signed URLs it makes, the access token it sends).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import {
  AuthenticationError,
  CommandExitError,
  FileNotFoundError,
  FilesystemEventType,
  InvalidArgumentError,
  NotFoundError,
  Sandbox,
  SandboxError,
  SandboxNotFoundError,
  TimeoutError,
} from 'e2b';
import { CLI, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';

const skip = process.getuid?.() !== 0 ? 'needs root (real crun sandboxes)' : false;

let d: TestDaemon;
let key: string;
let sbx: Sandbox | undefined;
const made: Sandbox[] = [];

/** A key made the way the README tells users to make one. */
function e2bKey(name: string, owner?: string): string {
  const r = spawnSync(process.execPath, [CLI, 'keys', 'create', '--e2b', '--name', name, ...(owner ? ['--owner', owner] : [])], {
    env: { ...process.env, CAPSULE_URL: d.url, CAPSULE_API_KEY: d.adminKey ?? '' },
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  const k = r.stdout.trim();
  assert.match(k, /^e2b_[0-9a-f]{40}$/);
  return k;
}

/** Every sandbox a test makes is killed at the end, and its id is in the failure message. */
async function create(opts: Parameters<typeof Sandbox.create>[1] = {}): Promise<Sandbox> {
  const s = await Sandbox.create('busybox', { allowInternetAccess: false, ...opts });
  made.push(s);
  return s;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('E2B SDK against Capsule', { skip, timeout: 10 * 60_000 }, () => {
  before(async () => {
    const dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir });
    key = e2bKey('e2b-sdk');
    process.env.E2B_API_KEY = key;
    process.env.E2B_API_URL = `${d.url}/e2b`;
    process.env.E2B_SANDBOX_URL = d.url;
    sbx = await create({ metadata: { suite: 'e2b', who: 'main' }, envs: { GREETING: 'hello from envs' }, timeoutMs: 5 * 60_000 });
  });
  after(async () => {
    for (const s of made) await s.kill().catch(() => undefined);
    delete process.env.E2B_API_KEY;
    delete process.env.E2B_API_URL;
    delete process.env.E2B_SANDBOX_URL;
    await d?.stop();
    if (d) await removeDataDir(d.dataDir);
  });

  it('creates a sandbox with its template, metadata, env vars and timeout', async () => {
    const s = sbx!;
    assert.match(s.sandboxId, /^sbx-/);
    const info = await s.getInfo();
    assert.equal(info.sandboxId, s.sandboxId);
    assert.equal(info.templateId, 'busybox');
    assert.equal(info.state, 'running');
    assert.deepEqual(info.metadata, { suite: 'e2b', who: 'main' });
    const left = info.endAt.getTime() - Date.now();
    assert.ok(left > 4 * 60_000 && left <= 5 * 60_000 + 5_000, `ends in ${left} ms`);
    assert.equal(await s.isRunning(), true);
    const r = await s.commands.run('echo "$GREETING"');
    assert.equal(r.stdout, 'hello from envs\n');
  });

  it('runs commands with streamed stdout and stderr, per-command envs and cwd, and exit codes', async () => {
    const s = sbx!;
    const out: string[] = [];
    const err: string[] = [];
    const r = await s.commands.run('echo one; echo two >&2; echo "$X" ; pwd', {
      envs: { X: 'per-command' },
      cwd: '/tmp',
      onStdout: (x) => void out.push(x),
      onStderr: (x) => void err.push(x),
    });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'one\nper-command\n/tmp\n');
    assert.equal(r.stderr, 'two\n');
    assert.equal(out.join(''), r.stdout);
    assert.equal(err.join(''), 'two\n');

    const e = await s.commands.run('echo partial; exit 3').then(
      () => assert.fail('exit 3 should throw'),
      (x: unknown) => x,
    );
    assert.ok(e instanceof CommandExitError, String(e));
    assert.equal(e.exitCode, 3);
    assert.equal(e.stdout, 'partial\n');
  });

  it('runs a background command, lists it, reconnects to it, feeds its stdin and kills it', async () => {
    const s = sbx!;
    const ticks: string[] = [];
    const h = await s.commands.run('i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done', { background: true, onStdout: (x) => void ticks.push(x) });
    assert.ok(h.pid > 0);
    const listed = await s.commands.list();
    const mine = listed.find((p) => p.pid === h.pid);
    assert.ok(mine, JSON.stringify(listed));
    assert.ok([mine.cmd, ...mine.args].join(' ').includes('tick'), JSON.stringify(mine));
    await h.disconnect();

    const again: string[] = [];
    const h2 = await s.commands.connect(h.pid, { onStdout: (x) => void again.push(x) });
    for (let i = 0; i < 50 && again.length === 0; i++) await sleep(100);
    assert.ok(again.join('').includes('tick'), 'output after connect');
    assert.equal(await h2.kill(), true);
    const ended = await h2.wait().then(
      (r) => r,
      (x: unknown) => x,
    );
    assert.ok(ended instanceof CommandExitError, String(ended));
    assert.notEqual(ended.exitCode, 0);
    assert.equal(await s.commands.kill(h.pid), false, 'a second kill finds nothing');
    assert.equal((await s.commands.list()).some((p) => p.pid === h.pid), false);

    const cat = await s.commands.run('cat', { background: true, stdin: true });
    await cat.sendStdin('through stdin\n');
    await cat.closeStdin();
    const done = await cat.wait();
    assert.equal(done.stdout, 'through stdin\n');
  });

  it('opens a PTY, resizes it, sends input and sees the command end', async () => {
    const s = sbx!;
    let out = '';
    const dec = new TextDecoder();
    const t = await s.pty.create({ cols: 80, rows: 24, onData: (b) => void (out += dec.decode(b)) });
    await s.pty.resize(t.pid, { cols: 123, rows: 45 });
    await s.pty.sendInput(t.pid, new TextEncoder().encode('stty size; tty; exit 7\n'));
    const r = await t.wait().then(
      (x) => x,
      (x: unknown) => x,
    );
    assert.ok(r instanceof CommandExitError, String(r));
    assert.equal(r.exitCode, 7);
    assert.match(out, /45 123/);
    assert.match(out, /\/dev\/pts\/\d+/);

    const t2 = await s.pty.create({ cols: 80, rows: 24, onData: () => undefined });
    assert.equal(await s.pty.kill(t2.pid), true);
    await t2.wait().catch(() => undefined);
    assert.equal((await s.commands.list()).some((p) => p.pid === t2.pid), false);
  });

  it('writes, reads, lists, stats, renames, makes and removes files', async () => {
    const s = sbx!;
    const w = await s.files.write('/tmp/e2b/a.txt', 'first file');
    assert.equal(w.path, '/tmp/e2b/a.txt');
    assert.equal(await s.files.read('/tmp/e2b/a.txt'), 'first file');
    const bytes = await s.files.read('/tmp/e2b/a.txt', { format: 'bytes' });
    assert.equal(Buffer.from(bytes).toString(), 'first file');
    const many = await s.files.write([
      { path: '/tmp/e2b/b.bin', data: new Uint8Array([0, 1, 2, 255]).buffer },
      { path: '/tmp/e2b/deep/c.txt', data: 'c' },
    ]);
    assert.deepEqual(many.map((x) => x.path).sort(), ['/tmp/e2b/b.bin', '/tmp/e2b/deep/c.txt']);
    assert.deepEqual([...(await s.files.read('/tmp/e2b/b.bin', { format: 'bytes' }))], [0, 1, 2, 255]);

    assert.equal(await s.files.makeDir('/tmp/e2b/made'), true);
    assert.equal(await s.files.makeDir('/tmp/e2b/made'), false, 'already there');
    const top = await s.files.list('/tmp/e2b');
    assert.deepEqual(top.map((e) => `${e.name}:${e.type}`).sort(), ['a.txt:file', 'b.bin:file', 'deep:dir', 'made:dir']);
    const a = top.find((e) => e.name === 'a.txt')!;
    assert.equal(a.size, 10);
    assert.equal(a.path, '/tmp/e2b/a.txt');
    const deep = await s.files.list('/tmp/e2b', { depth: 2 });
    assert.ok(deep.some((e) => e.path === '/tmp/e2b/deep/c.txt'), JSON.stringify(deep.map((e) => e.path)));

    const moved = await s.files.rename('/tmp/e2b/a.txt', '/tmp/e2b/made/a2.txt');
    assert.equal(moved.path, '/tmp/e2b/made/a2.txt');
    assert.equal(await s.files.exists('/tmp/e2b/a.txt'), false);
    assert.equal(await s.files.exists('/tmp/e2b/made/a2.txt'), true);
    const info = await s.files.getInfo('/tmp/e2b/made/a2.txt');
    assert.equal(info.type, 'file');
    assert.equal(info.size, 10);

    await s.files.remove('/tmp/e2b');
    assert.equal(await s.files.exists('/tmp/e2b'), false);
    await assert.rejects(s.files.read('/tmp/e2b/b.bin'), (e: unknown) => e instanceof NotFoundError);
  });

  it('uploads gzip, octet-stream and streamed bodies, reads as stream and blob, and writes 20 MiB', async () => {
    const s = sbx!;
    await s.files.write('/tmp/gz.txt', 'gzipped body', { gzip: true });
    assert.equal(await s.files.read('/tmp/gz.txt'), 'gzipped body');
    await s.files.write('/tmp/octet.txt', 'raw body', { useOctetStream: true });
    assert.equal(await s.files.read('/tmp/octet.txt'), 'raw body');
    await s.files.write('/tmp/streamed.txt', new Blob(['streamed body']).stream());
    assert.equal(await new Response(await s.files.read('/tmp/streamed.txt', { format: 'stream' })).text(), 'streamed body');
    assert.equal((await s.files.read('/tmp/streamed.txt', { format: 'blob' })).size, 'streamed body'.length);
    const big = Buffer.alloc(20 * 1024 * 1024, 7);
    big[big.length - 1] = 9;
    await s.files.write('/tmp/big.bin', big.buffer);
    const back = await s.files.read('/tmp/big.bin', { format: 'bytes' });
    assert.equal(back.length, big.length);
    assert.equal(back[back.length - 1], 9);
    await s.files.remove('/tmp/big.bin');
  });

  it('maps missing files, processes and directories to the SDK’s errors', async () => {
    const s = sbx!;
    const notFound = (e: unknown) => e instanceof FileNotFoundError;
    await assert.rejects(s.files.read('/tmp/nope'), notFound);
    await assert.rejects(s.files.list('/tmp/nope'), notFound);
    await assert.rejects(s.files.getInfo('/tmp/nope'), notFound);
    await assert.rejects(s.files.remove('/tmp/nope'), notFound);
    await assert.rejects(s.files.rename('/tmp/nope', '/tmp/nope2'), notFound);
    await assert.rejects(s.files.watchDir('/tmp/nope', () => undefined), notFound);
    await assert.rejects(s.files.read('/tmp'), (e: unknown) => e instanceof InvalidArgumentError);
    await assert.rejects(s.commands.connect(99999), (e: unknown) => e instanceof NotFoundError);
    await assert.rejects(s.commands.sendStdin(99999, 'x'), (e: unknown) => e instanceof NotFoundError);
    assert.equal(await s.commands.kill(99999), false);
    await assert.rejects(s.commands.run('pwd', { cwd: '/nope' }), (e: unknown) => e instanceof NotFoundError);
    await assert.rejects(s.commands.run('sleep 5', { timeoutMs: 500 }), (e: unknown) => e instanceof TimeoutError);
  });

  it('acts as the user the SDK names (Authorization: Basic), relative paths from that user’s home', async () => {
    const s = sbx!;
    assert.equal((await s.commands.run('id -un')).stdout, 'root\n', "busybox's default user");
    assert.equal((await s.commands.run('id -un', { user: 'nobody' })).stdout, 'nobody\n');
    await s.files.makeDir('/tmp/nobodys');
    await s.commands.run('chown nobody /tmp/nobodys');
    const w = await s.files.write('/tmp/nobodys/own.txt', 'mine', { user: 'nobody' });
    assert.equal(w.path, '/tmp/nobodys/own.txt');
    assert.equal((await s.commands.run('stat -c %U /tmp/nobodys/own.txt')).stdout, 'nobody\n');
    // What the user may not change is refused, as envd refuses it; an existing file keeps its owner.
    const denied = (e: unknown) => e instanceof SandboxError && /may not write/.test(e.message);
    await assert.rejects(s.files.write('/etc/by-nobody', 'x', { user: 'nobody' }), denied);
    await assert.rejects(s.files.write('/etc/passwd', 'x', { user: 'nobody' }), denied);
    await assert.rejects(s.files.makeDir('/etc/nobodys', { user: 'nobody' }), denied);
    await assert.rejects(s.files.remove('/etc/hostname', { user: 'nobody' }), denied);
    await assert.rejects(s.files.rename('/tmp/nobodys/own.txt', '/etc/own.txt', { user: 'nobody' }), denied);
    assert.equal(await s.files.exists('/etc/by-nobody'), false);
    assert.equal((await s.commands.run('stat -c %U /etc/passwd')).stdout, 'root\n');
    await s.files.write('/tmp/shared.txt', 'root wrote');
    await s.commands.run('chmod 666 /tmp/shared.txt');
    await s.files.write('/tmp/shared.txt', 'nobody wrote', { user: 'nobody' });
    assert.equal((await s.commands.run('stat -c %U /tmp/shared.txt; cat /tmp/shared.txt')).stdout, 'root\nnobody wrote');
    await assert.rejects(s.files.remove('/tmp/nobodys/missing', { user: 'nobody' }), (e: unknown) => e instanceof FileNotFoundError);
    await s.files.write('/tmp/secret.txt', 'root only');
    await s.commands.run('chmod 600 /tmp/secret.txt');
    await assert.rejects(s.files.read('/tmp/secret.txt', { user: 'nobody' }), (e: unknown) => e instanceof SandboxError && /may not read/.test(e.message));
    assert.equal(await s.files.read('/tmp/secret.txt'), 'root only');
    await s.files.makeDir('/tmp/closed');
    await s.commands.run('chmod 700 /tmp/closed');
    await assert.rejects(s.files.list('/tmp/closed', { user: 'nobody' }), (e: unknown) => e instanceof SandboxError && /may not read/.test(e.message));
    assert.deepEqual(await s.files.list('/tmp/closed'), []);

    const rel = await s.files.write('relative.txt', 'in home');
    assert.equal(rel.path, '/root/relative.txt');
    assert.equal((await s.commands.run('cat /root/relative.txt')).stdout, 'in home');
  });

  it('tells a killed sandbox from a live one on in-sandbox calls', async () => {
    const s = await create();
    await s.kill();
    await assert.rejects(s.commands.run('echo hi'), (e: unknown) => e instanceof SandboxNotFoundError);
    const h = await fetch(`${d.url}/health`, { headers: { 'e2b-sandbox-id': s.sandboxId } });
    assert.equal(h.status, 502);
  });

  it('uploads and downloads through signed URLs, and refuses a forged signature', async () => {
    const s = sbx!;
    const up = await s.uploadUrl('/tmp/signed.txt', { useSignatureExpiration: 60 });
    assert.ok(up.startsWith(d.url), up);
    assert.match(up, /signature=v1_/);
    const form = new FormData();
    form.append('file', new Blob(['signed upload']), 'signed.txt');
    const ur = await fetch(up, { method: 'POST', body: form });
    assert.equal(ur.status, 200, await ur.clone().text());
    assert.equal(await s.files.read('/tmp/signed.txt'), 'signed upload');

    const down = await s.downloadUrl('/tmp/signed.txt', { useSignatureExpiration: 60 });
    const dr = await fetch(down);
    assert.equal(dr.status, 200);
    assert.equal(await dr.text(), 'signed upload');
    const forged = await fetch(down.replace(/signature=[^&]+/, 'signature=v1_AAAA'));
    assert.equal(forged.status, 401);
    const otherPath = await fetch(down.replace(/path=[^&]+/, 'path=%2Fetc%2Fpasswd'));
    assert.equal(otherPath.status, 401, 'a signature is for one path');
  });

  it('refuses in-sandbox calls without the access token', async () => {
    const s = sbx!;
    const headers = { 'e2b-sandbox-id': s.sandboxId, 'e2b-sandbox-port': '49983' };
    const bare = await fetch(`${d.url}/files?path=%2Fetc%2Fhostname`, { headers });
    assert.equal(bare.status, 401);
    const wrong = await fetch(`${d.url}/envs`, { headers: { ...headers, 'x-access-token': 'not-the-token' } });
    assert.equal(wrong.status, 401);
    const rpc = await fetch(`${d.url}/filesystem.Filesystem/Stat`, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/json' },
      body: JSON.stringify({ path: '/' }),
    });
    assert.equal(rpc.status, 401);
    assert.equal(((await rpc.json()) as { code: string }).code, 'unauthenticated');
    const health = await fetch(`${d.url}/health`, { headers });
    assert.equal(health.status, 204, 'health is open, as isRunning() asks it without a token');

    // One sandbox's token opens that sandbox only.
    const other = await create();
    const token = async (id: string) => {
      const r = await fetch(`${d.url}/e2b/sandboxes/${id}`, { headers: { 'x-api-key': key } });
      return ((await r.json()) as { envdAccessToken: string }).envdAccessToken;
    };
    const mine = await token(s.sandboxId);
    const crossed = await fetch(`${d.url}/envs`, { headers: { 'e2b-sandbox-id': other.sandboxId, 'x-access-token': mine } });
    assert.equal(crossed.status, 401);
    const own = await fetch(`${d.url}/envs`, { headers: { 'e2b-sandbox-id': other.sandboxId, 'x-access-token': await token(other.sandboxId) } });
    assert.equal(own.status, 200);
    // A signed URL of one sandbox does not name a file of another.
    const url = await s.downloadUrl('/etc/hostname', { useSignatureExpiration: 60 });
    const elsewhere = await fetch(url, { headers: { 'e2b-sandbox-id': other.sandboxId } });
    assert.equal(elsewhere.status, 401);
    await other.kill();
  });

  it('serves envd on <port>-<id> host names too, with /envs and /metrics behind the access token', async () => {
    const s = sbx!;
    const detail = await fetch(`${d.url}/e2b/sandboxes/${s.sandboxId}`, { headers: { 'x-api-key': key } });
    assert.equal(detail.status, 200);
    const token = ((await detail.json()) as { envdAccessToken: string }).envdAccessToken;
    assert.ok(token.length >= 32);
    const port = new URL(d.url).port;
    const byHost = (p: string, headers: Record<string, string> = {}) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const r = http.get({ host: '127.0.0.1', port, path: p, headers: { host: `49983-${s.sandboxId}.capsule.localhost:${port}`, ...headers } }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        r.on('error', reject);
      });
    const envs = await byHost('/envs', { 'x-access-token': token });
    assert.equal(envs.status, 200, envs.body);
    assert.equal((JSON.parse(envs.body) as Record<string, string>).GREETING, 'hello from envs');
    assert.equal((await byHost('/envs')).status, 401);
    assert.equal((await byHost('/envs', { 'x-access-token': `${token}x` })).status, 401);
    const metrics = await byHost('/metrics', { 'x-access-token': token });
    assert.equal(metrics.status, 200, metrics.body);
    const m = JSON.parse(metrics.body) as { cpu_count: number; mem_total: number };
    assert.ok(m.cpu_count >= 1 && m.mem_total > 0, metrics.body);
    assert.equal((await byHost('/health')).status, 204);
  });

  it('watches a directory recursively', async () => {
    const s = sbx!;
    await s.files.makeDir('/tmp/watched');
    const events: string[] = [];
    const w = await s.files.watchDir('/tmp/watched', (e) => void events.push(`${e.type}:${e.name}`), { recursive: true });
    try {
      await s.files.makeDir('/tmp/watched/sub');
      await sleep(300);
      await s.commands.run('echo x > /tmp/watched/sub/f.txt; rm /tmp/watched/sub/f.txt');
      await s.files.write('/tmp/watched/sub/api.txt', 'through the files API');
      for (let i = 0; i < 50 && !events.includes(`${FilesystemEventType.WRITE}:sub/api.txt`); i++) await sleep(100);
    } finally {
      await w.stop();
    }
    // The daemon's own temporary file is not the user's: a write through the API is create + write of the file.
    assert.deepEqual(events.filter((e) => e.includes('capsule-write')), []);
    assert.ok(events.includes(`${FilesystemEventType.CREATE}:sub/api.txt`), events.join(' '));
    assert.ok(events.includes(`${FilesystemEventType.WRITE}:sub/api.txt`), events.join(' '));
    assert.ok(events.includes(`${FilesystemEventType.CREATE}:sub`), events.join(' '));
    assert.ok(events.includes(`${FilesystemEventType.CREATE}:sub/f.txt`), events.join(' '));
    assert.ok(events.includes(`${FilesystemEventType.WRITE}:sub/f.txt`), events.join(' '));
    assert.ok(events.includes(`${FilesystemEventType.REMOVE}:sub/f.txt`), events.join(' '));
  });

  it('changes the timeout', async () => {
    const s = sbx!;
    await s.setTimeout(90_000);
    const left = (await s.getInfo()).endAt.getTime() - Date.now();
    assert.ok(left > 80_000 && left <= 95_000, `ends in ${left} ms`);
    await s.setTimeout(5 * 60_000);
  });

  it('lists sandboxes with a metadata filter, newest first, in pages', async () => {
    const group = `g${Date.now()}`;
    const three: Sandbox[] = [];
    for (const i of [1, 2, 3]) three.push(await create({ metadata: { group, i: String(i) } }));
    const pager = Sandbox.list({ query: { metadata: { group } }, limit: 2 });
    assert.equal(pager.hasNext, true);
    const p1 = await pager.nextItems();
    assert.deepEqual(p1.map((x) => x.metadata.i), ['3', '2']);
    assert.equal(pager.hasNext, true);
    const p2 = await pager.nextItems();
    assert.deepEqual(p2.map((x) => x.metadata.i), ['1']);
    assert.equal(pager.hasNext, false);
    assert.ok(p1.every((x) => x.state === 'running' && x.templateId === 'busybox'));
    const none = await Sandbox.list({ query: { metadata: { group: 'no-such-group' } } }).nextItems();
    assert.deepEqual(none, []);
    for (const s of three) await s.kill();
  });

  it('pauses, reconnects (resuming) with files kept, and kills', async () => {
    const s = await create({ metadata: { who: 'pause' } });
    await s.files.write('/tmp/kept.txt', 'still here');
    assert.equal(await s.betaPause(), true);
    assert.equal((await s.getInfo()).state, 'paused');
    assert.equal(await s.isRunning(), false);
    const paused = await Sandbox.list({ query: { metadata: { who: 'pause' }, state: ['paused'] } }).nextItems();
    assert.deepEqual(paused.map((x) => x.sandboxId), [s.sandboxId]);

    const again = await Sandbox.connect(s.sandboxId);
    assert.equal((await again.getInfo()).state, 'running');
    assert.equal(await again.files.read('/tmp/kept.txt'), 'still here');
    assert.equal((await again.commands.run('cat /tmp/kept.txt')).stdout, 'still here');
    const bg = await again.commands.run('sleep 600', { background: true });
    assert.equal(await Sandbox.pause(s.sandboxId), true);
    assert.equal(await again.pause(), false, 'pausing a paused sandbox: 409, which the SDK answers as false');
    const third = await Sandbox.connect(s.sandboxId);
    assert.ok((await third.commands.list()).some((p) => p.pid === bg.pid), 'a paused sandbox keeps its processes');

    await again.kill();
    assert.equal(await again.isRunning(), false);
    await assert.rejects(Sandbox.getInfo(s.sandboxId), (e: unknown) => e instanceof NotFoundError);
    assert.equal(await Sandbox.kill(s.sandboxId), false, 'killing a killed sandbox finds nothing');
  });

  it('pauses at the timeout with lifecycle onTimeout pause, and a command resumes it (autoResume)', async () => {
    const s = await create({ timeoutMs: 2_000, lifecycle: { onTimeout: 'pause', autoResume: true } });
    assert.deepEqual((await s.getInfo()).lifecycle, { onTimeout: 'pause', autoResume: true });
    await s.files.write('/tmp/before.txt', 'before the pause');
    let state = 'running';
    for (let i = 0; i < 100 && state !== 'paused'; i++) {
      await sleep(200);
      state = (await s.getInfo()).state;
    }
    assert.equal(state, 'paused');
    assert.equal((await s.commands.run('cat /tmp/before.txt')).stdout, 'before the pause');
    assert.equal((await s.getInfo()).state, 'running');
  });

  it('maps allowInternetAccess and network.allowOut onto the sandbox’s egress policy', async () => {
    const policy = async (id: string) => {
      const r = await fetch(`${d.url}/v1/sandboxes/${id}/network`, { headers: { authorization: `Bearer ${d.adminKey}` } });
      assert.equal(r.status, 200);
      return ((await r.json()) as { egress: unknown }).egress;
    };
    const closed = await create();
    assert.equal(await policy(closed.sandboxId), 'none');
    const listed = await create({ network: { allowOut: ['example.com', '10.1.2.3'] } });
    assert.deepEqual(await policy(listed.sandboxId), { allow: ['example.com', '10.1.2.3'] });
    await closed.kill();
    await listed.kill();
  });

  it('reports metrics, and host names that stay on this machine', async () => {
    const s = sbx!;
    let metrics = await s.getMetrics();
    for (let i = 0; i < 40 && metrics.length === 0; i++) {
      await sleep(250);
      metrics = await s.getMetrics();
    }
    assert.ok(metrics.length > 0, 'a sample within 10 s');
    assert.ok(metrics[0]!.memTotal > 0 && metrics[0]!.cpuCount >= 1, JSON.stringify(metrics[0]));
    const port = new URL(d.url).port;
    assert.equal(s.getHost(8080), `8080-${s.sandboxId}.localhost:${port}`);
  });

  it('answers NotFoundError for an unknown sandbox and for another tenant’s', async () => {
    await assert.rejects(Sandbox.connect('sbx-000000000000'), (e: unknown) => e instanceof NotFoundError);
    await assert.rejects(Sandbox.getInfo('sbx-000000000000'), (e: unknown) => e instanceof NotFoundError);
    const other = e2bKey('e2b-other', 'someone-else');
    await assert.rejects(Sandbox.getInfo(sbx!.sandboxId, { apiKey: other }), (e: unknown) => e instanceof NotFoundError);
    const theirs = await Sandbox.list({ apiKey: other }).nextItems();
    assert.deepEqual(theirs, []);
  });

  it('answers AuthenticationError for a bad key', async () => {
    const bad = `e2b_${'0'.repeat(40)}`;
    await assert.rejects(Sandbox.create('busybox', { apiKey: bad }), (e: unknown) => e instanceof AuthenticationError);
    await assert.rejects(Sandbox.list({ apiKey: bad }).nextItems(), (e: unknown) => e instanceof AuthenticationError);
  });

  it('refuses an unknown template with a 404', async () => {
    const e = await Sandbox.create('no-such-template', { allowInternetAccess: false }).then(
      (x) => (made.push(x), undefined),
      (x: unknown) => x,
    );
    // The SDK turns create's 404 into its generic SandboxError, with E2B's status and message.
    assert.ok(e instanceof SandboxError, String(e));
    assert.match(e.message, /404: template no-such-template not found/);
  });
});
