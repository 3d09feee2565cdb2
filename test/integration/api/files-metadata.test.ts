/**
 * File metadata (extended attributes, ADR 0015) end to end against real busybox sandboxes: Capsule's
 * own SDK and REST API, the unmodified `e2b` SDK, each reading what the other wrote, the upload
 * headers' rules (lowercased keys, first of duplicate headers, limits as 400), symlinks, metadata set
 * inside the sandbox itself, and a sandbox whose agent predates the feature (422 unsupported).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Sandbox as E2bSandbox, InvalidArgumentError as E2bInvalidArgumentError } from 'e2b';
import { InvalidArgumentError, Sandbox, UnsupportedError } from '../../../src/sdk/index.js';
import { CLI, api, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { AGENT_BINARY, buildAgentVariant } from '../../unit/agent/helpers.js';

const skip = process.getuid?.() !== 0 ? 'needs root (real crun sandboxes)' : false;

describe('file metadata', { skip, timeout: 10 * 60_000 }, () => {
  let d: TestDaemon;
  let dataDir: string;
  let native: Sandbox;
  let e2b: E2bSandbox;

  before(async () => {
    dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir });
    const r = spawnSync(process.execPath, [CLI, 'keys', 'create', '--e2b', '--name', 'meta'], {
      env: { ...process.env, CAPSULE_URL: d.url, CAPSULE_API_KEY: d.adminKey ?? '' },
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, r.stderr);
    process.env.E2B_API_KEY = r.stdout.trim();
    process.env.E2B_API_URL = `${d.url}/e2b`;
    process.env.E2B_SANDBOX_URL = d.url;
    // One sandbox, seen through both views: metadata written through one is read through the other.
    e2b = await E2bSandbox.create('busybox', { allowInternetAccess: false });
    native = await Sandbox.connect(e2b.sandboxId, { apiUrl: d.url });
  });
  after(async () => {
    await native?.kill().catch(() => undefined);
    delete process.env.E2B_API_KEY;
    delete process.env.E2B_API_URL;
    delete process.env.E2B_SANDBOX_URL;
    await d?.stop();
    if (d) await removeDataDir(d.dataDir);
  });

  it('native SDK: a write sets metadata (keys lowercased), stat and list show it', async () => {
    const w = await native.files.write('/tmp/m/a.txt', 'hello', { metadata: { Owner: 'ci', build: '42', empty: '' } });
    assert.deepEqual(w.metadata, { owner: 'ci', build: '42', empty: '' });
    assert.deepEqual((await native.files.stat('/tmp/m/a.txt')).metadata, { owner: 'ci', build: '42', empty: '' });
    const list = await native.files.list('/tmp/m');
    assert.deepEqual(list.find((e) => e.name === 'a.txt')?.metadata, { owner: 'ci', build: '42', empty: '' });
    assert.equal(await native.files.read('/tmp/m/a.txt'), 'hello');
  });

  it('native SDK: the next write replaces the metadata; a write without any clears it', async () => {
    await native.files.write('/tmp/m/r.txt', '1', { metadata: { a: '1', b: '2' } });
    await native.files.write('/tmp/m/r.txt', '2', { metadata: { b: 'two' } });
    assert.deepEqual((await native.files.stat('/tmp/m/r.txt')).metadata, { b: 'two' });
    await native.files.write('/tmp/m/r.txt', '3');
    const st = await native.files.stat('/tmp/m/r.txt');
    assert.equal(st.metadata, undefined);
    assert.equal(st.size, 1);
    await native.files.write('/tmp/m/r.txt', '4', { metadata: { c: '3' } });
    await native.files.write('/tmp/m/r.txt', '5', { metadata: {} });
    assert.equal((await native.files.stat('/tmp/m/r.txt')).metadata, undefined);
  });

  it('a read-only file gets its metadata and keeps its mode', async () => {
    await native.files.write('/tmp/m/ro.txt', 'ro', { mode: 0o444, metadata: { k: 'v' } });
    const st = await native.files.stat('/tmp/m/ro.txt');
    assert.equal(st.mode & 0o777, 0o444);
    assert.deepEqual(st.metadata, { k: 'v' });
  });

  it('bad metadata is a 400 and leaves the file as it was', async () => {
    await native.files.write('/tmp/m/keep.txt', 'kept', { metadata: { keep: 'yes' } });
    const bad: Array<[string, Record<string, string>]> = [
      ['a space in a key', { 'a b': 'v' }],
      ['a key with a colon', { 'a:b': 'v' }],
      ['a value that is not printable ASCII', { k: 'café' }],
      ['a control character', { k: 'a\nb' }],
      ['a key over 246 bytes', { ['k'.repeat(247)]: 'v' }],
      ['over 4096 bytes in all', { a: 'x'.repeat(2100), b: 'x'.repeat(2100) }],
      ['over 128 keys', Object.fromEntries(Array.from({ length: 129 }, (_, i) => [`k${i}`, '']))],
      ['keys that differ only in case', { Key: '1', key: '2' }],
    ];
    for (const [what, metadata] of bad) {
      await assert.rejects(native.files.write('/tmp/m/keep.txt', 'changed', { metadata }), InvalidArgumentError, what);
    }
    assert.equal(await native.files.read('/tmp/m/keep.txt'), 'kept');
    assert.deepEqual((await native.files.stat('/tmp/m/keep.txt')).metadata, { keep: 'yes' });
    // A 246-byte key is fine.
    const key = 'k'.repeat(246);
    await native.files.write('/tmp/m/long.txt', 'f', { metadata: { [key]: 'v'.repeat(500) } });
    assert.deepEqual((await native.files.stat('/tmp/m/long.txt')).metadata, { [key]: 'v'.repeat(500) });
    // 4096 bytes pass the API's rules; what the file system holds per file may be less (ext4 counts a
    // header per attribute): then it is a 400 that says so, never a 500, and the file is unchanged.
    const full = { [key]: 'v'.repeat(4096 - 9 - 246) };
    const r = await native.files.write('/tmp/m/long.txt', 'g', { metadata: full }).then(
      () => 'stored',
      (e: unknown) => (e instanceof InvalidArgumentError && /attribute space/.test(e.message) ? 'refused' : e),
    );
    if (r === 'stored') assert.deepEqual((await native.files.stat('/tmp/m/long.txt')).metadata, full);
    else assert.equal(r, 'refused');
    if (r === 'refused') assert.equal(await native.files.read('/tmp/m/long.txt'), 'f');
  });

  it('CLI: files write --meta (repeatable, the first value of a key wins) and files stat show it', () => {
    const env = { ...process.env, CAPSULE_URL: d.url, CAPSULE_API_KEY: d.adminKey ?? '' };
    const w = spawnSync(process.execPath, [CLI, 'files', 'write', native.id, '/tmp/m/cli.txt', '--meta', 'Owner=cli', '--meta', 'owner=second', '--meta', 'eq=a=b', '--json'], {
      env,
      input: 'from the cli',
      encoding: 'utf8',
    });
    assert.equal(w.status, 0, w.stderr);
    assert.deepEqual((JSON.parse(w.stdout) as { metadata: unknown }).metadata, { owner: 'cli', eq: 'a=b' });
    const st = spawnSync(process.execPath, [CLI, 'files', 'stat', native.id, '/tmp/m/cli.txt'], { env, encoding: 'utf8' });
    assert.equal(st.status, 0, st.stderr);
    assert.match(st.stdout, /^ {2}owner=cli$/m);
    assert.match(st.stdout, /^ {2}eq=a=b$/m);
    const bad = spawnSync(process.execPath, [CLI, 'files', 'write', native.id, '/tmp/m/cli2.txt', '--meta', 'novalue'], { env, input: 'x', encoding: 'utf8' });
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /--meta takes key=value/);
  });

  it('REST: metadata that is not a JSON object of strings is a 400', async () => {
    for (const q of ['not-json', '[1]', '{"k":1}', 'null']) {
      const r = await api(d.url, 'PUT', `/v1/sandboxes/${native.id}/files?path=/tmp/m/rest.txt&metadata=${encodeURIComponent(q)}`, Buffer.from('x'));
      assert.equal(r.status, 400, `${q}: ${r.text}`);
      assert.equal(r.json.error.code, 'invalid_argument');
    }
    const ok = await api(d.url, 'PUT', `/v1/sandboxes/${native.id}/files?path=/tmp/m/rest.txt&metadata=${encodeURIComponent('{"k":"v"}')}`, Buffer.from('x'));
    assert.equal(ok.status, 200, ok.text);
    assert.deepEqual(ok.json, { path: '/tmp/m/rest.txt', size: 1, metadata: { k: 'v' } });
  });

  it('a symlink shows no metadata of its target, and writing through its name replaces the link, not the target', async () => {
    await native.files.write('/tmp/m/target.txt', 't', { metadata: { secret: 's' } });
    const ln = await native.commands.run('ln -s /tmp/m/target.txt /tmp/m/link');
    assert.equal(ln.exitCode, 0, ln.stderr);
    const st = await native.files.stat('/tmp/m/link');
    assert.equal(st.type, 'symlink');
    assert.equal(st.metadata, undefined);
    const list = await native.files.list('/tmp/m');
    assert.equal(list.find((e) => e.name === 'link')?.metadata, undefined);
    assert.deepEqual(list.find((e) => e.name === 'target.txt')?.metadata, { secret: 's' });
    await native.files.write('/tmp/m/link', 'new', { metadata: { via: 'link' } });
    assert.deepEqual((await native.files.stat('/tmp/m/link')).metadata, { via: 'link' });
    assert.deepEqual((await native.files.stat('/tmp/m/target.txt')).metadata, { secret: 's' });
    assert.equal(await native.files.read('/tmp/m/target.txt'), 't');
  });

  it('metadata set outside the API (as a sandbox process could) shows up; names that are not UTF-8 are left out and flagged', async (t) => {
    // busybox has no setfattr: set them on the sandbox's root file system from the host instead.
    await native.files.write('/tmp/m/inside.txt', 'i');
    const hostFile = path.join(dataDir, 'sandboxes', native.id, 'rootfs', 'tmp/m/inside.txt');
    if (!fs.existsSync(hostFile)) {
      t.skip(`SKIPPED: the sandbox's /tmp is not visible at ${hostFile}`);
      return;
    }
    const set = (nameHex: string, value: string) =>
      spawnSync('python3', ['-c', 'import os,sys; os.setxattr(sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3].encode())', hostFile, nameHex, value], { encoding: 'utf8' });
    const a = set(Buffer.from('user.e2b.inside').toString('hex'), 'yes');
    assert.equal(a.status, 0, a.stderr);
    const b = set(Buffer.concat([Buffer.from('user.e2b.'), Buffer.from([0xff, 0xfe])]).toString('hex'), 'x');
    assert.equal(b.status, 0, b.stderr);
    const st = await native.files.stat('/tmp/m/inside.txt');
    assert.deepEqual(st.metadata, { inside: 'yes' });
    assert.equal(st.metadataPartial, true);
    assert.deepEqual((await e2b.files.getInfo('/tmp/m/inside.txt')).metadata, { inside: 'yes' });
  });

  it('e2b SDK: write with metadata, getInfo and list show it; the answer carries it', async () => {
    const w = await e2b.files.write('/tmp/e/one.txt', 'from e2b', { metadata: { Owner: 'agent', step: '3' } });
    assert.deepEqual(w.metadata, { owner: 'agent', step: '3' });
    assert.deepEqual((await e2b.files.getInfo('/tmp/e/one.txt')).metadata, { owner: 'agent', step: '3' });
    const entries = await e2b.files.list('/tmp/e');
    assert.deepEqual(entries.find((e) => e.name === 'one.txt')?.metadata, { owner: 'agent', step: '3' });
    // Every upload replaces it: none clears it.
    await e2b.files.write('/tmp/e/one.txt', 'again');
    assert.equal((await e2b.files.getInfo('/tmp/e/one.txt')).metadata, undefined);
    // A rename keeps it (the same file), and its answer shows it.
    await e2b.files.write('/tmp/e/two.txt', '2', { metadata: { keep: 'me' } });
    const moved = await e2b.files.rename('/tmp/e/two.txt', '/tmp/e/three.txt');
    assert.deepEqual(moved.metadata, { keep: 'me' });
  });

  it('e2b SDK: a multi-file write (multipart) gives every file the same metadata', async () => {
    const out = await e2b.files.write(
      [
        { path: '/tmp/e/multi/a.txt', data: 'a' },
        { path: '/tmp/e/multi/b.txt', data: 'b' },
      ],
      { metadata: { batch: '9' } },
    );
    assert.equal(out.length, 2);
    for (const name of ['a.txt', 'b.txt']) assert.deepEqual((await e2b.files.getInfo(`/tmp/e/multi/${name}`)).metadata, { batch: '9' });
    await assert.rejects(e2b.files.write('/tmp/e/x.txt', 'x', { metadata: { 'bad key': 'v' } }), E2bInvalidArgumentError);
  });

  it('both views share one namespace: each reads what the other wrote', async () => {
    await native.files.write('/tmp/x/n.txt', 'n', { metadata: { from: 'native' } });
    assert.deepEqual((await e2b.files.getInfo('/tmp/x/n.txt')).metadata, { from: 'native' });
    await e2b.files.write('/tmp/x/e.txt', 'e', { metadata: { from: 'e2b' } });
    assert.deepEqual((await native.files.stat('/tmp/x/e.txt')).metadata, { from: 'e2b' });
  });

  it('upload headers: the first of duplicate headers counts; bad keys and values are 400s', async () => {
    const post = async (file: string, headers: Record<string, string | string[]>): Promise<{ status: number; body: string }> => {
      const url = await e2b.uploadUrl(file, { useSignatureExpiration: 60 });
      return new Promise((resolve, reject) => {
        const req = http.request(url, { method: 'POST' }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on('error', reject);
        req.setHeader('content-type', 'application/octet-stream');
        for (const [k, v] of Object.entries(headers)) req.setHeader(k, v);
        req.end('raw');
      });
    };
    const dup = await post('/tmp/h/dup.txt', { 'X-Metadata-Dup': ['first', 'second'], 'X-Metadata-Other': 'o' });
    assert.equal(dup.status, 200, dup.body);
    assert.deepEqual((await e2b.files.getInfo('/tmp/h/dup.txt')).metadata, { dup: 'first', other: 'o' });
    assert.deepEqual((JSON.parse(dup.body) as Array<{ metadata?: unknown }>)[0]!.metadata, { dup: 'first', other: 'o' });
    const longKey = await post('/tmp/h/bad.txt', { [`X-Metadata-${'k'.repeat(247)}`]: 'v' });
    assert.equal(longKey.status, 400, longKey.body);
    const latin1 = await post('/tmp/h/bad.txt', { 'X-Metadata-k': Buffer.from([0x63, 0x61, 0x66, 0xe9]).toString('latin1') });
    assert.equal(latin1.status, 400, latin1.body);
    assert.equal(await native.files.exists('/tmp/h/bad.txt'), false);
  });

  it('a sandbox whose agent predates metadata: 422 unsupported when metadata is given, plain files otherwise', async () => {
    const variants = fs.mkdtempSync(path.join(path.dirname(dataDir), 'capsule-agent-variants-'));
    const target = path.join(dataDir, 'bin', 'capsule-agent');
    try {
      fs.copyFileSync(buildAgentVariant(variants, 'v1.2'), `${target}.tmp`);
      fs.chmodSync(`${target}.tmp`, 0o755);
      fs.renameSync(`${target}.tmp`, target);
      const old = await Sandbox.create({ apiUrl: d.url, template: 'busybox' });
      try {
        await assert.rejects(old.files.write('/tmp/o.txt', 'x', { metadata: { k: 'v' } }), (e: unknown) => e instanceof UnsupportedError && /does not support xattr/.test((e as Error).message));
        assert.equal(await old.files.exists('/tmp/o.txt'), false);
        await old.files.write('/tmp/o.txt', 'plain');
        await old.files.write('/tmp/o2.txt', 'cleared', { metadata: {} });
        assert.equal((await old.files.stat('/tmp/o.txt')).metadata, undefined);
        assert.equal((await old.files.list('/tmp')).some((e) => e.name === 'o.txt'), true);
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
