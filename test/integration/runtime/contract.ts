/**
 * The driver contract: what every RuntimeDriver must do for the sandbox
 * service, checked against a real backend with the real agent. A new backend
 * (gVisor, a microVM, a remote node) is done when this suite passes for it
 * unchanged; capabilities it declares false are skipped, loudly.
 *
 * Run it with driverContract(name, make) from a *.test.ts file per backend
 * (contract-crun.test.ts, contract-runc.test.ts).
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { Readable } from 'node:stream';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connectAgent } from '../../../src/agent/client.js';
import type { AgentConnection } from '../../../src/agent/types.js';
import type { ContainerSpec, LayerRef, RuntimeDriver } from '../../../src/runtime/types.js';
import { leftovers } from '../../helpers/leftovers.js';
import { ID_BASE, makeFixture, type Fixture } from './fixture.js';
import { execFileSync } from 'node:child_process';

export interface ContractTarget {
  driver: RuntimeDriver;
  /** Data dir of the driver (for the leftover checks). */
  dataDir: string;
  close(): Promise<void>;
}

const RESOURCES = { cpus: 1, memoryMb: 128, pids: 64 };

/** A layer directory with the given files, owned by the mapped id range like a template's tree. */
function layer(fx: Fixture, name: string, files: Record<string, string>): LayerRef {
  const dir = path.join(fx.root, 'layers', name);
  for (const [p, content] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, p)), { recursive: true });
    fs.writeFileSync(path.join(dir, p), content);
  }
  execFileSync('chown', ['-R', `${ID_BASE}:${ID_BASE}`, dir]);
  return { path: dir };
}

async function run(conn: AgentConnection, argv: string[]): Promise<{ code: number; out: string }> {
  const p = await conn.exec({ argv, env: { PATH: '/bin:/usr/bin' }, stdin: false });
  let out = '';
  p.on('stdout', (c) => (out += c.toString()));
  p.on('stderr', (c) => (out += c.toString()));
  return { code: (await p.exited).exitCode, out };
}

export function driverContract(name: string, make: (fx: Fixture) => Promise<ContractTarget>, skip: string | null): void {
  describe(`driver contract: ${name}`, { skip: skip ?? false }, () => {
    let fx: Fixture;
    let t: ContractTarget;
    const made = new Set<string>();
    let n = 0;
    const newId = () => `contract-${name.replace(/[^a-z0-9]/g, '')}-${process.pid}-${n++}`;
    const spec = (id: string, over: Partial<ContainerSpec> = {}): ContainerSpec => ({
      id,
      layers: [{ path: fx.templateRootfs }],
      writable: { diskMb: 64 },
      resources: RESOURCES,
      network: { mode: 'none' },
      ...over,
    });
    async function start(s: ContainerSpec): Promise<AgentConnection> {
      made.add(s.id);
      const info = await t.driver.create(s);
      assert.equal(info.status, 'running');
      return connectAgent(t.driver.agentEndpoint(s.id), { timeoutMs: 5000 });
    }
    async function assertGone(id: string) {
      assert.equal((await t.driver.inspect(id)).status, 'missing');
      assert.ok(!(await t.driver.list()).includes(id), 'not listed');
      assert.ok(!(await t.driver.listLeftovers()).includes(id), 'no leftovers listed');
      let left = leftovers(id, t.dataDir);
      for (let i = 0; i < 60 && left.length > 0; i++) {
        await new Promise((r) => setTimeout(r, 25));
        left = leftovers(id, t.dataDir);
      }
      assert.deepEqual(left, [], `sandbox ${id} left ${left.join(', ')}`);
    }

    before(async () => {
      fx = makeFixture();
      t = await make(fx);
    });
    after(async () => {
      for (const id of made) await t?.driver.destroy(id).catch((e: unknown) => console.error(`cleanup of ${id}:`, e));
      await t?.close();
      fx?.cleanup();
    });

    it('declares its kind, name and capabilities', () => {
      assert.match(t.driver.kind, /^[a-z0-9-]+$/);
      assert.ok(t.driver.name.length > 0);
      const c = t.driver.capabilities;
      assert.ok(['container', 'gvisor', 'microvm'].includes(c.isolation));
      assert.ok(c.network.includes('none'), 'every backend can give a sandbox no network');
      assert.ok(Number.isInteger(c.maxLayers) && c.maxLayers >= 1);
    });

    it('creates a sandbox whose agent answers at the endpoint it names, as root of its own namespaces', async () => {
      const id = newId();
      const conn = await start(spec(id));
      try {
        assert.match((await conn.ping()).version, /^capsule-agent\//);
        const r = await run(conn, ['sh', '-c', 'echo $$; id -u; hostname; ls /sys/class/net']);
        assert.equal(r.code, 0, r.out);
        const [pid, uid, host, ...nics] = r.out.trim().split('\n');
        assert.ok(Number(pid) < 100, `pid ${pid} is small: its own pid namespace`);
        assert.equal(uid, '0');
        assert.equal(host, id);
        assert.deepEqual(nics, ['lo'], 'network "none": loopback only');
        assert.equal((await t.driver.inspect(id)).status, 'running');
        assert.ok((await t.driver.list()).includes(id));
      } finally {
        conn.close();
      }
      await t.driver.destroy(id);
      await assertGone(id);
    });

    it("lets the agent name the sandbox in /etc/hosts, keeping the template's entries and replacing a stale name", async () => {
      // A template built in another sandbox (or a snapshot of one) carries that sandbox's line; no localhost.
      const tpl = layer(fx, 'hosts', { 'etc/hosts': '10.9.8.7\tdb.internal # the template\'s\n127.0.1.1\tsbx-old\t# capsule: this sandbox\n' });
      const id = newId();
      const conn = await start(spec(id, { layers: [{ path: fx.templateRootfs }, tpl] }));
      const want = `10.9.8.7\tdb.internal # the template's\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t${id}\t# capsule: this sandbox\n`;
      try {
        const r = await run(conn, ['sh', '-c', 'cat /etc/hosts; echo "10.1.1.1 mine" >> /etc/hosts; ls -a /etc | grep -c capsule-hosts']);
        assert.equal(r.out, `${want}0\n`, 'no temp file left behind');
        assert.equal(fs.readFileSync(path.join(tpl.path, 'etc/hosts'), 'utf8').includes('sbx-old'), true, 'the layer is untouched');
      } finally {
        conn.close();
      }
      // A later connection (the daemon reconnecting) leaves the user's edit alone.
      const again = await connectAgent(t.driver.agentEndpoint(id), { timeoutMs: 5000 });
      try {
        assert.equal((await run(again, ['cat', '/etc/hosts'])).out, `${want}10.1.1.1 mine\n`);
      } finally {
        again.close();
      }
      await t.driver.destroy(id);
      await assertGone(id);
    });

    it('stacks layers lowest first, with the writable layer on top, and leaves the layers untouched', async (tc) => {
      if (t.driver.capabilities.maxLayers < 3) return tc.skip(`${name} stacks fewer than 3 layers`);
      const base = layer(fx, 'base', { 'etc/which': 'base\n', 'etc/base-only': 'b\n' });
      const mid = layer(fx, 'mid', { 'etc/which': 'mid\n', 'etc/mid-only': 'm\n' });
      const id = newId();
      const conn = await start(spec(id, { layers: [{ path: fx.templateRootfs }, base, mid] }));
      try {
        const r = await run(conn, ['sh', '-c', 'cat /etc/which /etc/base-only /etc/mid-only; echo up > /etc/which; cat /etc/which; ls /bin/sh']);
        assert.equal(r.code, 0, r.out);
        assert.equal(r.out, 'mid\nb\nm\nup\n/bin/sh\n');
        assert.equal(fs.readFileSync(path.join(mid.path, 'etc/which'), 'utf8'), 'mid\n', 'the layer is read-only to the sandbox');
      } finally {
        conn.close();
      }
      await t.driver.destroy(id);
      await assertGone(id);
    });

    it('bounds the writable layer by its disk quota', async () => {
      const id = newId();
      const conn = await start(spec(id, { writable: { diskMb: 32 } }));
      try {
        const r = await run(conn, ['sh', '-c', 'dd if=/dev/zero of=/big bs=1M count=64 2>&1; echo rc=$?']);
        assert.match(r.out, /No space left on device/);
        assert.match(r.out, /rc=1/);
      } finally {
        conn.close();
      }
      await t.driver.destroy(id);
      await assertGone(id);
    });

    it('opens the upload file its agent offers, and nothing else, when it declares fileHandoff', async (tc) => {
      if (!t.driver.capabilities.fileHandoff || !t.driver.openAgentFile) return tc.skip(`${name} does not declare fileHandoff`);
      const id = newId();
      const conn = await start(spec(id));
      try {
        const data = crypto.randomBytes(3 << 20);
        const refused: Array<number | undefined> = [];
        const res = await conn.writeFile('/tmp/handoff.bin', Readable.from([data]), {
          mode: 0o640,
          handoff: async (fd, ino) => {
            refused.push(await t.driver.openAgentFile!(id, fd, ino + 1n)); // another inode than announced
            refused.push(await t.driver.openAgentFile!(id, 0, ino)); // another of the agent's descriptors
            return t.driver.openAgentFile!(id, fd, ino);
          },
        });
        assert.deepEqual(refused, [undefined, undefined]);
        assert.deepEqual(res, { size: data.length });
        const r = await run(conn, ['sh', '-c', 'sha256sum /tmp/handoff.bin; stat -c %u:%a /tmp/handoff.bin']);
        const [sum, owner] = r.out.trim().split('\n');
        assert.equal(sum!.split(' ')[0], crypto.createHash('sha256').update(data).digest('hex'));
        assert.equal(owner, '0:640', "the agent's file: root inside the sandbox, the asked mode");
      } finally {
        conn.close();
      }
      await t.driver.destroy(id);
      await assertGone(id);
    });

    it('changes limits in place when it declares updateResources', async (tc) => {
      if (!t.driver.capabilities.updateResources) return tc.skip(`${name} does not declare updateResources`);
      const id = newId();
      const conn = await start(spec(id));
      try {
        await t.driver.update(id, { pids: 32, memoryMb: 96 });
        // A fork bomb of 40 background sleeps: the pids limit stops it short of 40.
        const r = await run(conn, ['sh', '-c', 'n=0; while [ $n -lt 40 ]; do sleep 5 & n=$((n+1)); done 2>/dev/null; ps | wc -l']);
        assert.ok(Number(r.out.trim().split('\n').pop()) < 40, r.out);
      } finally {
        conn.close();
      }
      await t.driver.destroy(id);
      await assertGone(id);
    });

    it('pauses and resumes every process when it declares pause', async (tc) => {
      if (!t.driver.capabilities.pause) return tc.skip(`${name} does not declare pause`);
      const id = newId();
      const conn = await start(spec(id));
      try {
        // The counter file is replaced by a rename, so a reader never sees it half-written (or frozen half-written).
        await run(conn, ['sh', '-c', 'i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/count; done & true']);
        await new Promise((r) => setTimeout(r, 150));
        await t.driver.pause(id);
        assert.equal((await t.driver.inspect(id)).status, 'paused');
        const frozenAt = fs.readFileSync(path.join(t.dataDir, 'sandboxes', id, 'rootfs', 'tmp', 'count'), 'utf8');
        await new Promise((r) => setTimeout(r, 150));
        assert.equal(fs.readFileSync(path.join(t.dataDir, 'sandboxes', id, 'rootfs', 'tmp', 'count'), 'utf8'), frozenAt, 'nothing runs while paused');
        await t.driver.resume(id);
        assert.equal((await t.driver.inspect(id)).status, 'running');
        const r = await run(conn, ['cat', '/tmp/count']);
        assert.ok(Number(r.out) > Number(frozenAt), `the loop went on from ${frozenAt.trim()} to ${r.out.trim()}`);
        // A paused sandbox can be destroyed too.
        await t.driver.pause(id);
      } finally {
        conn.close();
      }
      await t.driver.destroy(id);
      await assertGone(id);
    });

    it('stops a sandbox keeping only its files, and starts it again with them when it declares stop', async (tc) => {
      if (!t.driver.capabilities.stop) return tc.skip(`${name} does not declare stop`);
      const id = newId();
      let conn = await start(spec(id));
      try {
        // Written without a sync: the stop must write it back itself.
        const w = await run(conn, ['sh', '-c', 'echo kept > /root/f; mkdir -p /data/d; echo deep > /data/d/g; sleep 1000 & true']);
        assert.equal(w.code, 0, w.out);
      } finally {
        conn.close();
      }
      await t.driver.stop(id);
      assert.equal((await t.driver.inspect(id)).status, 'stopped');
      assert.ok(!(await t.driver.list()).includes(id), 'no container while stopped');
      assert.ok((await t.driver.listLeftovers()).includes(id), 'its files are listed as leftovers (restart cleanup must be told to keep them)');
      // No processes, mounts, loop device, cgroups, socket or runtime state: what a host reboot leaves is what a stop leaves.
      assert.deepEqual(leftovers(id, t.dataDir), ['sandbox dir']);
      await t.driver.stop(id); // idempotent

      const info = await t.driver.start(id);
      assert.equal(info.status, 'running');
      conn = await connectAgent(t.driver.agentEndpoint(id), { timeoutMs: 5000 });
      try {
        const r = await run(conn, ['sh', '-c', 'cat /root/f /data/d/g; hostname; ps -o comm | grep -c sleep; true']);
        assert.equal(r.out, `kept\ndeep\n${id}\n0\n`, 'files kept, same hostname, no process of the earlier run');
      } finally {
        conn.close();
      }
      await t.driver.destroy(id);
      await assertGone(id);
    });

    it('stops a paused sandbox, and starts it on the layer trees it was made on even after they moved', async (tc) => {
      if (!t.driver.capabilities.stop || !t.driver.capabilities.pause) return tc.skip(`${name} does not declare stop and pause`);
      const moving = layer(fx, `moving-${n}`, { 'etc/which': 'made on this one\n' });
      const id = newId();
      const conn = await start(spec(id, { layers: [{ path: fx.templateRootfs }, moving] }));
      conn.close();
      await t.driver.pause(id);
      await t.driver.stop(id);
      assert.equal((await t.driver.inspect(id)).status, 'stopped');
      // A template rebuild: the old tree is renamed aside and a new one takes its path.
      const aside = `${moving.path}-old`;
      fs.renameSync(moving.path, aside);
      const fresh = layer(fx, path.basename(moving.path), { 'etc/which': 'rebuilt\n' });
      assert.equal(fresh.path, moving.path);
      await t.driver.start(id);
      const c2 = await connectAgent(t.driver.agentEndpoint(id), { timeoutMs: 5000 });
      try {
        assert.equal((await run(c2, ['cat', '/etc/which'])).out, 'made on this one\n');
      } finally {
        c2.close();
      }
      await t.driver.destroy(id);
      await assertGone(id);
    });

    it('attaches a volume read-write to one sandbox and read-only to another; its data outlives both, within its quota', async (tc) => {
      if (!t.driver.capabilities.volumes) return tc.skip(`${name} does not declare volumes`);
      const vid = `vol-${Math.random().toString(36).slice(2).padEnd(12, '0').slice(0, 12)}`;
      await t.driver.prepareVolume(vid, 32);
      await t.driver.prepareVolume(vid, 32); // idempotent
      const rw = newId();
      const ro = newId();
      const a = await start(spec(rw, { volumes: [{ volumeId: vid, sizeMb: 32, target: '/data', readOnly: false }] }));
      const b = await start(spec(ro, { volumes: [{ volumeId: vid, sizeMb: 32, target: '/mnt/shared', readOnly: true }] }));
      try {
        assert.equal((await run(a, ['sh', '-c', 'echo from-a > /data/x && id -u > /data/owner && cat /data/x'])).out, 'from-a\n');
        assert.equal((await run(b, ['cat', '/mnt/shared/x'])).out, 'from-a\n', 'the other sandbox sees it');
        const w = await run(b, ['sh', '-c', 'echo no > /mnt/shared/y; mount -o remount,rw /mnt/shared; echo no > /mnt/shared/y']);
        assert.match(w.out, /Read-only file system/);
        assert.equal((await run(a, ['ls', '/data'])).out, 'owner\nx\n', 'nothing was written through the read-only mount');
        const quota = await run(a, ['sh', '-c', 'dd if=/dev/zero of=/data/big bs=1M count=64 2>&1; rm -f /data/big']);
        assert.match(quota.out, /No space left on device/, 'the volume has its own quota');
      } finally {
        a.close();
        b.close();
      }
      await t.driver.destroy(rw);
      await t.driver.destroy(ro);
      await assertGone(rw);
      await assertGone(ro);
      const again = newId();
      const c = await start(spec(again, { volumes: [{ volumeId: vid, sizeMb: 32, target: '/data', readOnly: false }] }));
      try {
        assert.equal((await run(c, ['cat', '/data/x'])).out, 'from-a\n', 'the data outlived both sandboxes');
      } finally {
        c.close();
      }
      await t.driver.destroy(again);
      await t.driver.removeVolume(vid);
      await t.driver.removeVolume(vid); // idempotent
      assert.ok(!fs.existsSync(path.join(t.dataDir, 'volumes', vid)), 'its disk is gone');
      assert.deepEqual(leftovers(vid, t.dataDir), [], 'no mount or loop device of it is left');
    });

    it('refuses a volume over a reserved or unnormalized path', async (tc) => {
      if (!t.driver.capabilities.volumes) return tc.skip(`${name} does not declare volumes`);
      for (const target of ['/', '/proc/x', '/.capsule', 'data', '/a/../b', '/a/']) {
        const id = newId();
        made.add(id);
        await assert.rejects(t.driver.create(spec(id, { volumes: [{ volumeId: 'vol-000000000000', sizeMb: 32, target, readOnly: false }] })), (e: any) => e.code === 'invalid_argument', target);
        await assertGone(id);
      }
    });

    it('destroy is idempotent, and an unknown id is quietly missing', async () => {
      const ghost = newId();
      await t.driver.destroy(ghost);
      await t.driver.destroy(ghost);
      assert.equal((await t.driver.inspect(ghost)).status, 'missing');
    });

    it('a create that fails (missing layer) says why and leaves nothing', async () => {
      const id = newId();
      made.add(id);
      await assert.rejects(t.driver.create(spec(id, { layers: [{ path: path.join(fx.root, 'no-such-layer') }] })), (e: any) => e.code === 'runtime_error' && /does not exist/.test(e.message));
      await assertGone(id);
    });

    it('a create aborted at any moment leaves nothing', async () => {
      for (const ms of [0, 3, 8, 15, 30]) {
        const id = newId();
        made.add(id);
        const ok = await t.driver.create(spec(id), AbortSignal.timeout(ms)).then(
          () => true,
          () => false,
        );
        if (ok) await t.driver.destroy(id);
        await assertGone(id);
      }
    });

    it('reports a sandbox whose init died as not running', async () => {
      const id = newId();
      const conn = await start(spec(id));
      const info = await t.driver.inspect(id);
      conn.close();
      if (info.pid) process.kill(info.pid, 'SIGKILL');
      else await t.driver.destroy(id);
      let status = (await t.driver.inspect(id)).status;
      for (let i = 0; i < 40 && status === 'running'; i++) {
        await new Promise((r) => setTimeout(r, 25));
        status = (await t.driver.inspect(id)).status;
      }
      assert.notEqual(status, 'running');
      await t.driver.destroy(id);
      await assertGone(id);
    });
  });
}
