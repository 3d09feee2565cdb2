/**
 * Escape battery, the files API and the filesystem: symlinks, "..", absolute
 * host paths, hard links, races between the API and the sandbox, the daemon's
 * data directory, SQLite file and agent socket, the agent binary.
 * The agent resolves every path inside the sandbox's own mount namespace, so
 * all of these must land in the sandbox or fail. Under microvm the agent runs
 * in the guest (its init), so the host's paths do not exist there at all.
 */
import { after, before, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { api } from '../helpers/daemon.js';
import {
  attack,
  createSandbox,
  getFile,
  probe,
  per,
  probe1,
  putFile,
  sh,
  sleepMs,
  forEachIsolation,
  startBattery,
  stopBattery,
  type Battery,
} from './helpers.js';

let b: Battery;
let id: string;
const B = () => b;
const sha = (p: string) => crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');

forEachIsolation('security: files API and filesystem', (isolation) => {
  before(async () => {
    b = await startBattery(isolation);
    id = await createSandbox(b, { probes: ['kernel', 'procs', 'net'] });
  });
  after(async () => {
    await stopBattery(b);
  });

  it('the host guard notices a change (self-test of the battery)', () => {
    const saved = fs.readFileSync(b.guard.markerPath, 'utf8');
    fs.writeFileSync(b.guard.markerPath, 'changed');
    try {
      assert.ok(b.guard.check().some((d) => d.includes('marker')));
    } finally {
      fs.writeFileSync(b.guard.markerPath, saved);
    }
    assert.deepEqual(b.guard.check(), []);
  });

  attack(B, 'API read through symlinks to host paths (/etc/shadow, the host marker) gets the sandbox file or 404', async () => {
    const marker = b.guard.markerPath;
    await sh(b, id, `ln -sf /etc/shadow /tmp/shadow-link; ln -sf ${marker} /tmp/marker-link; ln -sfn / /tmp/rootlink`);
    for (const p of ['/tmp/shadow-link', '/tmp/marker-link', `/tmp/rootlink${marker}`, '/tmp/rootlink/etc/shadow']) {
      const r = await getFile(b, id, p);
      assert.ok(r.status === 404 || r.status === 400, `${p}: ${r.status} ${r.bytes.toString().slice(0, 100)}`);
      assert.ok(!r.bytes.toString().includes('HOST MARKER'), `${p} returned the host marker`);
    }
  });

  attack(B, 'API ".." and absolute host paths stay inside the sandbox root', async () => {
    const marker = b.guard.markerPath;
    for (const p of [`/../../../../..${marker}`, `../../..${marker}`, `/tmp/../../..${marker}`, '/../../../../etc/shadow', `/proc/self/root${marker}`, `/proc/1/root${marker}`]) {
      const r = await getFile(b, id, p);
      assert.ok(r.status >= 400 && r.status < 500, `${p}: ${r.status}`);
      assert.ok(!r.bytes.toString().includes('HOST MARKER'));
    }
    // /etc/hostname through ".." is the sandbox's own.
    const h = await getFile(b, id, '/tmp/../../../etc/hostname');
    assert.equal(h.status, 200);
    assert.equal(h.bytes.toString(), 'capsule\n');
  });

  attack(B, 'API writes through a symlink to a host path, or to the host path itself, land in the sandbox', async () => {
    const marker = b.guard.markerPath;
    await sh(b, id, `ln -sf ${marker} /tmp/write-link`);
    assert.equal((await putFile(b, id, '/tmp/write-link', 'PWNED via symlink')).status, 200);
    assert.equal((await putFile(b, id, `/../../..${marker}`, 'PWNED via dotdot')).status, 200);
    // gVisor (runsc 20221219) resolves "<symlink to />/anything" as "/" itself: the write names a directory (400).
    assert.equal((await putFile(b, id, '/tmp/rootlink/tmp/capsule-escape-probe', 'x')).status, per(b, { container: 200, gvisor: 400, microvm: 200 }));
    assert.equal(fs.readFileSync(marker, 'utf8'), b.guard.markerContent, 'host marker untouched');
    assert.ok(!fs.existsSync('/tmp/capsule-escape-probe'), 'nothing created in the host /tmp');
    const inside = await sh(b, id, `cat ${marker}; echo; cat /tmp/capsule-escape-probe`);
    assert.equal(inside.stdout, per(b, { container: 'PWNED via dotdot\nx', gvisor: 'PWNED via dotdot\n', microvm: 'PWNED via dotdot\nx' }), "the writes went to the sandbox's own files");
  });

  attack(B, 'API mkdir, rename and delete through symlinks to / never touch the host', async () => {
    const hostDir = `/tmp/capsule-sec-mkdir-${process.pid}`;
    // Under gVisor the path resolves to "/" (its symlink bug, above): mkdir fails with EINVAL (400).
    const mk = await api(b.url, 'POST', `/v1/sandboxes/${id}/files/mkdir`, { path: `/tmp/rootlink${hostDir}/sub` });
    assert.equal(mk.status, per(b, { container: 204, gvisor: 400, microvm: 204 }), mk.text);
    assert.ok(!fs.existsSync(hostDir), 'mkdir did not reach the host');
    await putFile(b, id, '/tmp/to-move', 'm');
    const mv = await api(b.url, 'POST', `/v1/sandboxes/${id}/files/rename`, { from: '/tmp/to-move', to: `/tmp/rootlink/../../..${b.guard.markerPath}` });
    assert.equal(mv.status, 204, mv.text);
    // Deleting a symlink to / removes the link only, never what it points at.
    await sh(b, id, 'ln -sfn / /tmp/rootlink2');
    const del = await api(b.url, 'DELETE', `/v1/sandboxes/${id}/files?path=${encodeURIComponent('/tmp/rootlink2')}&recursive=true`);
    assert.equal(del.status, 204, del.text);
    const after1 = await sh(b, id, 'test -e /tmp/rootlink2 && echo link-left; test -x /bin/sh && echo sandbox-intact');
    assert.equal(after1.stdout, 'sandbox-intact\n');
    if (b.isolation === 'gvisor') {
      // gVisor resolves /tmp/rootlink/tmp as "/" (its symlink bug): the agent refuses to remove the root.
      const viaRoot = await api(b.url, 'DELETE', `/v1/sandboxes/${id}/files?path=${encodeURIComponent('/tmp/rootlink/tmp')}&recursive=true`);
      assert.equal(viaRoot.status, 400, viaRoot.text);
      assert.equal((await sh(b, id, 'test -x /bin/sh && echo sandbox-intact')).stdout, 'sandbox-intact\n');
    }
    const rm = await api(b.url, 'DELETE', `/v1/sandboxes/${id}/files?path=${encodeURIComponent(`/..${b.guard.markerPath}`)}`);
    assert.equal(rm.status, 204, 'removes the sandbox copy made by the rename');
  });

  attack(B, 'API list of a symlink to / shows the sandbox root, not the host root', async () => {
    const r = await api(b.url, 'GET', `/v1/sandboxes/${id}/files/list?path=${encodeURIComponent('/tmp/rootlink')}`);
    assert.equal(r.status, 200, r.text);
    const names: string[] = r.json.entries.map((e: { name: string }) => e.name);
    assert.ok(names.includes('.capsule') && names.includes('probes'), `got ${names.join(',')}`);
    // Under microvm the template is an ext4 image (mkfs.ext4 -d), whose root has a lost+found of its own.
    const guestOwn = per(b, { container: [] as string[], gvisor: [] as string[], microvm: ['lost+found'] });
    const hostOnly = fs
      .readdirSync('/')
      .filter((n) => !fs.existsSync(path.join(b.d.dataDir, 'templates', 'busybox', 'rootfs', n)) && n !== 'probes' && !guestOwn.includes(n));
    assert.ok(hostOnly.length > 0, 'the host root has entries the template lacks');
    for (const n of hostOnly) assert.ok(!names.includes(n), `host entry /${n} listed`);
  });

  attack(B, 'hard links: a template file linked and written is copied up; host template and host files unchanged', async () => {
    const templatePasswd = path.join(b.d.dataDir, 'templates', 'busybox', 'rootfs', 'etc', 'passwd');
    const before = sha(templatePasswd);
    const ln = await sh(b, id, 'ln /etc/passwd /tmp/passwd-hl && echo pwned::0:0::/:/bin/sh >> /tmp/passwd-hl; echo rc=$?');
    assert.match(ln.stdout, /rc=0/, 'linking inside the sandbox works');
    assert.equal((await putFile(b, id, '/tmp/passwd-hl', 'root::0:0:pwned:/:/bin/sh\n')).status, 200);
    assert.equal(sha(templatePasswd), before, 'the shared template (lower layer) is unchanged');
    // A host file cannot be named at all, so it cannot be linked.
    const hl = await sh(b, id, `ln ${b.guard.markerPath} /tmp/marker-hl; echo rc=$?`);
    assert.doesNotMatch(hl.stdout, /rc=0/);
    // The agent's directory is a separate read-only bind mount: no cross-mount link. A microVM has no such dir.
    const ag = await sh(b, id, 'ln /.capsule/capsule-agent /tmp/agent-hl; echo rc=$?');
    assert.doesNotMatch(ag.stdout, /rc=0/);
    assert.match(ag.stderr, per(b, { container: /cross-device|Invalid cross/i, gvisor: /cross-device|Invalid cross/i, microvm: /No such file/i }));
  });

  attack(B, 'the agent binary (/.capsule) is read-only inside: writes, truncates and API uploads fail; host copy unchanged', async () => {
    const hostAgent = path.join(b.d.dataDir, 'bin', 'capsule-agent');
    const before = sha(hostAgent);
    if (b.isolation === 'microvm') {
      // The guest's init is the agent, from the initramfs QEMU loaded at boot (a cached cpio in <data>/microvm/boot):
      // beneath the guest's root, not in it: /.capsule is the template's empty mount point. A write there makes the
      // guest's own file; nothing on the host changes.
      const bootDir = path.join(b.d.dataDir, 'microvm', 'boot');
      const boot = () => Object.fromEntries(fs.readdirSync(bootDir).map((f) => [f, sha(path.join(bootDir, f))]));
      const bootBefore = boot();
      assert.ok(Object.keys(bootBefore).some((f) => f.endsWith('.cpio')), 'the initramfs is cached on the host');
      assert.equal((await sh(b, id, 'ls -A /.capsule')).stdout, '', 'no agent in the guest\'s root');
      const put = await putFile(b, id, '/.capsule/capsule-agent', 'PWNED');
      assert.equal(put.status, 200, put.text);
      assert.equal((await sh(b, id, 'cat /.capsule/capsule-agent')).stdout, 'PWNED', "the guest's own file");
      assert.equal(sha(hostAgent), before);
      assert.deepEqual(boot(), bootBefore, 'the cached initramfs is unchanged');
      assert.equal((await sh(b, id, 'echo alive')).stdout, 'alive\n', 'the agent still serves');
      return;
    }
    // EACCES (owned by an unmapped host uid) or EROFS (read-only bind), whichever the kernel checks first.
    assert.ok(['EROFS', 'EACCES'].includes(await probe1(b, id, 'kernel', ['write', '/.capsule/capsule-agent', 'PWNED'])));
    const sh1 = await sh(b, id, 'echo x > /.capsule/capsule-agent; echo rc=$?; rm -f /.capsule/capsule-agent; echo rc=$?; touch /.capsule/new; echo rc=$?');
    assert.doesNotMatch(sh1.stdout, /rc=0/);
    const put = await putFile(b, id, '/.capsule/capsule-agent', 'PWNED');
    assert.ok(put.status >= 400 && put.status < 500, `upload over the agent: ${put.status} ${put.text}`);
    assert.equal(sha(hostAgent), before);
    const ls = await sh(b, id, 'ls -A /.capsule');
    assert.equal(ls.stdout, 'capsule-agent\n', 'only the agent is exposed, not the rest of the data dir');
  });

  attack(B, "daemon data dir, SQLite file and agent socket are not visible or reachable from inside", async () => {
    const dataDir = b.d.dataDir;
    const db = path.join(dataDir, 'capsule.db');
    assert.ok(fs.existsSync(db), 'the daemon has its database');
    const dbHead = fs.readFileSync(db).subarray(0, 16).toString('latin1');
    const adminKey = path.join(dataDir, 'admin.key');
    const sock = per(b, {
      container: path.join(dataDir, 'run', `${id}.sock`),
      gvisor: path.join(dataDir, 'gvisor', 'sock', id, 'agent.sock'),
      // The relay's socket on the host; the guest's agent has only its virtio-serial port.
      microvm: path.join(dataDir, 'microvm', 'sb', id, 'agent.sock'),
    });
    assert.ok(fs.existsSync(sock), 'the agent socket exists on the host');

    const r = await sh(b, id, `ls ${dataDir}; echo rc=$?; ls ${path.dirname(sock)}; echo rc=$?; find / -path /proc -prune -o -path /sys -prune -o \\( -name '*.db' -o -name '*.db-wal' -o -name '*.sqlite*' -o -type s \\) -print`);
    assert.equal((r.stdout.match(/rc=0/g) ?? []).length, 0, r.stdout);
    if (b.isolation === 'gvisor') {
      // gVisor cannot hand the agent a listening fd: the agent binds its socket in a directory bound into the
      // sandbox (root's, 0700). runsc lets the sandbox create host sockets there but not connect to them:
      // nobody inside, root included, can reach the agent, nor even stat its socket.
      for (const user of [undefined, 'user']) {
        const got = await probe1(b, id, 'net', ['unix-connect-path', '/.capsule-sock/agent.sock'], user ? { user } : {});
        assert.ok(['EPERM', 'EACCES'].includes(got), `${user ?? 'root'} connected to the agent: ${got}`);
      }
      assert.match((await sh(b, id, 'stat -c "%a %u" /.capsule-sock')).stdout, /^700 0$/m);
    }
    assert.doesNotMatch(r.stdout, /\.db|\.sqlite|\.sock/, 'no database or socket visible');
    if (b.d.adminKey) {
      const grep = await sh(b, id, `find / -path /proc -prune -o -path /sys -prune -o -path /dev -prune -o -type f -print | xargs grep -l ${b.d.adminKey}; cat /proc/*/environ 2>/dev/null | tr "\\0" "\\n" | grep -c CAPSULE_API_KEY`);
      assert.equal(grep.stdout.trim(), '0', "the daemon's admin API key is nowhere in the sandbox");
    }
    for (const p of [db, `/../../..${db}`, `/proc/1/root${db}`, sock, adminKey, `/../..${adminKey}`]) {
      const g = await getFile(b, id, p);
      assert.ok(g.status >= 400 && g.status < 500, `${p}: ${g.status}`);
    }
    // Writing to the host path of the database only creates a file in the sandbox.
    assert.equal((await putFile(b, id, db, 'not a database')).status, 200);
    assert.equal(fs.readFileSync(db).subarray(0, 16).toString('latin1'), dbHead, 'host database untouched');
    assert.equal(dbHead, 'SQLite format 3\0');
    // The agent's listening fd is not inherited by commands (only 0, 1, 2 are open).
    assert.equal(await probe1(b, id, 'procs', ['open-fds']), '0,1,2');
    const api2 = await api(b.url, 'GET', `/v1/sandboxes/${id}`);
    assert.equal(api2.status, 200, 'the daemon still answers and the database works');
  });

  attack(B, 'API upload of a setuid-root binary (mode 4755) gives no privilege when run as user', async () => {
    const bin = await sh(b, id, 'cat /probes/procs | base64 | tr -d "\\n"');
    const bytes = Buffer.from(bin.stdout, 'base64');
    assert.ok(bytes.length > 1000);
    const up = await putFile(b, id, '/usr/local/bin/suid-probe', bytes, '4755');
    assert.equal(up.status, 200, up.text);
    const st = await sh(b, id, 'stat -c "%A %u" /usr/local/bin/suid-probe');
    assert.ok(/^-rw[sx]r-xr-x 0$/.test(st.stdout.trim()) || /^-rwxr-xr-x 0$/.test(st.stdout.trim()), st.stdout);
    const lines = await probe(b, id, 'procs', ['creds'], { user: 'user' }).then(() => sh(b, id, '/usr/local/bin/suid-probe creds', { user: 'user' }));
    assert.match(lines.stdout, /^uid=1000 euid=1000$/m);
    assert.match(lines.stdout, /^CapEff:\s+0+$/m);
    assert.match(lines.stdout, /^setuid0=EPERM$/m);
  });

  attack(B, 'race: the sandbox swaps a path between a dir and a symlink to / while the API reads and writes through it', async () => {
    const tag = `capsule-race-${process.pid}-${crypto.randomBytes(3).toString('hex')}`;
    const loop = await sh(
      b,
      id,
      `end=$(( $(date +%s) + 8 )); while [ $(date +%s) -lt $end ]; do rm -rf /tmp/race; mkdir -p /tmp/race/tmp; echo in-dir > /tmp/race/tmp/${tag}; rm -rf /tmp/race; ln -sfn / /tmp/race; done`,
      { background: true, timeoutMs: 15_000 },
    );
    const markerRel = b.guard.markerPath; // e.g. /tmp/capsule-sec-marker-...
    let ok = 0;
    let failed = 0;
    const deadline = Date.now() + 2500;
    while (Date.now() < deadline) {
      const reqs = [
        putFile(b, id, `/tmp/race/${tag}`, 'RACE WRITE'),
        putFile(b, id, `/tmp/race${markerRel}`, 'RACE OVER MARKER'),
        getFile(b, id, `/tmp/race${markerRel}`),
        getFile(b, id, `/tmp/race/tmp/${tag}`),
        api(b.url, 'POST', `/v1/sandboxes/${id}/files/mkdir`, { path: `/tmp/race/${tag}-dir` }),
        api(b.url, 'DELETE', `/v1/sandboxes/${id}/files?path=${encodeURIComponent(`/tmp/race/${tag}-dir`)}&recursive=true`),
      ];
      for (const r of await Promise.all(reqs)) {
        assert.ok(r.status < 500 || r.status === 500, 'answers');
        if (r.status < 300) ok++;
        else failed++;
        if ('bytes' in r && r.status === 200) assert.ok(!r.bytes.toString().includes('HOST MARKER'), 'read a host file');
      }
    }
    await api(b.url, 'POST', `/v1/sandboxes/${id}/commands/${loop.pid}/signal`, { signal: 'SIGKILL' });
    await sleepMs(50);
    assert.ok(ok > 0, `some requests went through (${ok} ok, ${failed} refused)`);
    assert.ok(!fs.existsSync(`/${tag}`), 'nothing written to the host root');
    assert.ok(!fs.existsSync(`/${tag}-dir`), 'no dir made at the host root');
    assert.ok(!fs.existsSync(`/tmp/${tag}`), 'nothing written to the host /tmp');
    assert.equal(fs.readFileSync(b.guard.markerPath, 'utf8'), b.guard.markerContent);
    const alive = await sh(b, id, 'echo ok');
    assert.equal(alive.stdout, 'ok\n');
  });
}, { microvm: true });
