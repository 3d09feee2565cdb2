/**
 * Named volumes against a real daemon and real sandboxes: shared between
 * sandboxes, read-only mounts, data that outlives sandboxes and a daemon
 * SIGKILL, deletion refused while attached, owner scoping, and the CLI.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { api, CLI, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { leftovers, settledLeftovers } from '../../helpers/leftovers.js';
import { ConflictError, NotFoundError, Sandbox, Volume, type ConnectionOptions } from '../../../src/sdk/index.js';

function capsule(d: TestDaemon, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CAPSULE_URL: d.url } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('volumes (real sandboxes)', () => {
  const dataDir = tempDataDir();
  fs.chmodSync(dataDir, 0o755);
  let d: TestDaemon;
  let conn: ConnectionOptions;
  before(async () => {
    d = await startTestDaemon({ dataDir });
    conn = { apiUrl: d.url };
  });
  after(async () => {
    await d?.stop();
    await removeDataDir(dataDir);
  });

  it('two sandboxes share a volume; a read-only one refuses writes; the data outlives both and a daemon SIGKILL', async () => {
    const v = await Volume.create({ ...conn, name: 'shared', sizeMb: 64 });
    assert.match(v.id, /^vol-[a-z0-9]{12}$/);
    assert.deepEqual(v.usedBy, []);
    await assert.rejects(Volume.create({ ...conn, name: 'shared' }), (e: unknown) => e instanceof ConflictError);

    const writer = await Sandbox.create({ ...conn, template: 'busybox', volumes: [{ name: 'shared', path: '/data' }] });
    const reader = await Sandbox.create({ ...conn, template: 'busybox', volumes: [{ name: 'shared', path: '/mnt/in', readOnly: true }] });
    assert.deepEqual((await reader.getInfo()).volumes, [{ name: 'shared', path: '/mnt/in', readOnly: true }]);
    await writer.commands.run('echo hello > /data/greeting; mkdir -p /data/deep && echo 2 > /data/deep/f');
    assert.equal(await reader.files.read('/mnt/in/greeting'), 'hello\n');
    const w = await reader.commands.run('echo x > /mnt/in/nope');
    assert.notEqual(w.exitCode, 0);
    assert.match(w.stderr, /Read-only file system/);
    await assert.rejects(reader.files.write('/mnt/in/nope2', 'x'));
    assert.equal((await writer.commands.run('ls /data')).stdout, 'deep\ngreeting\n', 'nothing came through the read-only mount');
    // The volume's mount names no host path and no loop device (its root is /data inside its own filesystem).
    const mi = (await reader.commands.run('grep " /mnt/in " /proc/self/mountinfo')).stdout;
    assert.match(mi, /^\S+ \S+ \S+ \/data \/mnt\/in ro,/);
    assert.ok(!mi.includes(dataDir) && !/\/dev\/loop\d/.test(mi), mi);
    const used = await Volume.get('shared', conn);
    assert.deepEqual([...used.usedBy].sort(), [writer.id, reader.id].sort());

    await writer.kill();
    await reader.kill();
    await d.kill();
    d = await startTestDaemon({ dataDir });
    conn = { apiUrl: d.url };
    const later = await Sandbox.create({ ...conn, template: 'busybox', volumes: [{ name: 'shared', path: '/srv/x' }] });
    assert.equal((await later.commands.run('cat /srv/x/greeting /srv/x/deep/f')).stdout, 'hello\n2\n');
    await later.kill();
  });

  it('deleting a volume is refused while a live (even stopped) sandbox attaches it; afterwards nothing of it is left', async () => {
    const v = await Volume.create({ ...conn, name: 'busy', sizeMb: 32 });
    const s = await Sandbox.create({ ...conn, template: 'busybox', volumes: [{ name: 'busy', path: '/data' }] });
    await s.commands.run('echo kept > /data/f');
    await s.stop();
    const del = await api(d.url, 'DELETE', '/v1/volumes/busy');
    assert.equal(del.status, 409, del.text);
    assert.deepEqual(del.json.error.details.sandboxes, [s.id]);
    // A host reboot unmounts the volume: the start mounts it again before the sandbox binds it.
    const mnt = path.join(dataDir, 'volumes', v.id, 'mnt');
    assert.equal(spawnSync('umount', [mnt]).status, 0);
    await s.start();
    assert.equal((await s.commands.run('cat /data/f')).stdout, 'kept\n');
    await s.kill();
    await Volume.delete('busy', conn);
    await assert.rejects(Volume.get('busy', conn), (e: unknown) => e instanceof NotFoundError);
    assert.ok(!fs.existsSync(path.join(dataDir, 'volumes', v.id)));
    assert.deepEqual(await settledLeftovers(v.id, dataDir), []);
    assert.deepEqual(leftovers(s.id, dataDir), []);
  });

  it('a create names only its owner\'s volumes, never a host path; bad paths are 400', async () => {
    const keyFor = async (owner: string) => (await api(d.url, 'POST', '/v1/keys', { name: owner, owner })).json.key as string;
    const alice = { apiUrl: d.url, apiKey: await keyFor('alice') };
    const bob = { apiUrl: d.url, apiKey: await keyFor('bob') };
    await Volume.create({ ...alice, name: 'notes', sizeMb: 16 });
    await assert.rejects(Sandbox.create({ ...bob, template: 'busybox', volumes: [{ name: 'notes', path: '/n' }] }), (e: unknown) => e instanceof NotFoundError);
    await assert.rejects(Volume.get('notes', bob), (e: unknown) => e instanceof NotFoundError);
    assert.deepEqual(await Volume.list(bob), []);
    await assert.rejects(Volume.delete('notes', bob), (e: unknown) => e instanceof NotFoundError);
    // Bob's own volume of the same name is another disk.
    await Volume.create({ ...bob, name: 'notes', sizeMb: 16 });
    const sa = await Sandbox.create({ ...alice, template: 'busybox', volumes: [{ name: 'notes', path: '/n' }] });
    const sb = await Sandbox.create({ ...bob, template: 'busybox', volumes: [{ name: 'notes', path: '/n' }] });
    await sa.commands.run('echo alice > /n/who');
    assert.equal((await sb.commands.run('cat /n/who 2>&1; true')).stdout.includes('alice'), false);
    await sa.kill();
    await sb.kill();
    for (const [body, why] of [
      [{ name: '../../etc', path: '/x' }, 'a name is never a path'],
      [{ name: 'notes', path: 'relative' }, 'relative'],
      [{ name: 'notes', path: '/proc/x' }, 'reserved'],
      [{ name: 'notes', path: '/a/../b' }, 'unnormalized'],
      [{ name: 'notes', path: '/data', source: '/etc' }, 'no host source'],
    ] as const) {
      const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', volumes: [body] }, { authorization: `Bearer ${alice.apiKey}` });
      assert.equal(r.status, 400, `${why}: ${r.text}`);
    }
    const two = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', volumes: [{ name: 'notes', path: '/a' }, { name: 'notes', path: '/a' }] }, { authorization: `Bearer ${alice.apiKey}` });
    assert.equal(two.status, 400, two.text);
    await Volume.delete('notes', alice);
    await Volume.delete('notes', bob);
  });

  it('capsule volume create|ls|rm and capsule create --volume', async () => {
    const c = await capsule(d, ['volume', 'create', 'cli-vol', '--size-mb', '32']);
    assert.equal(c.code, 0, c.stderr);
    const s = await capsule(d, ['create', '--template', 'busybox', '--volume', 'cli-vol:/work:rw']);
    assert.equal(s.code, 0, s.stderr);
    const id = s.stdout.trim();
    assert.match((await capsule(d, ['volume', 'ls'])).stdout, new RegExp(`cli-vol\\s+32 MiB\\s+.*${id}`));
    const rm = await capsule(d, ['volume', 'rm', 'cli-vol']);
    assert.equal(rm.code, 1);
    assert.match(rm.stderr, /^capsule: conflict: volume cli-vol is in use by sandbox/);
    await capsule(d, ['kill', id]);
    assert.equal((await capsule(d, ['volume', 'rm', 'cli-vol'])).code, 0);
    const bad = await capsule(d, ['create', '--template', 'busybox', '--volume', 'nopath']);
    assert.equal(bad.code, 2);
  });
});
