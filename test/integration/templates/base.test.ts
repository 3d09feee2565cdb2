/**
 * The `base` built-in template (debootstrap with the usual tools; cached per
 * machine through CAPSULE_TEMPLATE_CACHE like debian): what a sandbox of it
 * has, who runs its commands, and that sudo works there and only there.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { api, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { connectClient } from '../mcp/fixture.js';
import { debootstrapSkip } from '../../helpers/debootstrap.js';
import { microvmSkip } from '../../helpers/microvm.js';

const skip = debootstrapSkip();
const runscMissing = () => (spawnSync('runsc', ['--version'], { stdio: 'ignore' }).status === 0 ? false : 'needs runsc (apt-get install runsc)');

let d: TestDaemon;

async function exec(id: string, cmd: string, extra: Record<string, unknown> = {}): Promise<{ stdout: string; stderr: string; exitCode: number }> {
  const r = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd, ...extra });
  assert.equal(r.status, 200, r.text);
  return r.json;
}

describe('the base template', { skip, timeout: 15 * 60_000 }, () => {
  before(async () => {
    const dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    // TCG is test-only for microVMs (ADR 0017): only the microvm case below makes one.
    d = await startTestDaemon({ dataDir, env: { CAPSULE_MICROVM_ALLOW_TCG: '1' } });
  });
  after(async () => {
    await d?.stop();
    if (d) await removeDataDir(d.dataDir);
  });

  it('has bash, python (3), git, curl, sudo and ps; commands run as user in /home/user; sudo works without a password', async () => {
    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'base' });
    assert.equal(r.status, 201, r.text);
    const id = r.json.id as string;
    try {
      const who = await exec(id, 'id -un; id -u; pwd; echo $HOME');
      assert.equal(who.exitCode, 0, who.stderr);
      assert.deepEqual(who.stdout.trim().split('\n'), ['user', '1000', '/home/user', '/home/user']);
      const tools = await exec(id, 'bash --version | head -1; python --version; python3 -c "print(6*7)"; git --version; curl --version | head -1; ps -o pid= -p 1; ls /etc/ssl/certs | head -1');
      assert.equal(tools.exitCode, 0, tools.stderr);
      assert.match(tools.stdout, /GNU bash/);
      assert.match(tools.stdout, /Python 3\./);
      assert.match(tools.stdout, /\n42\n/);
      assert.match(tools.stdout, /git version/);
      assert.match(tools.stdout, /curl \d/);
      const sudo = await exec(id, 'sudo -n id -u && sudo -n touch /root-made && ls -l /root-made | cut -d" " -f3');
      assert.equal(sudo.exitCode, 0, sudo.stderr);
      assert.deepEqual(sudo.stdout.trim().split('\n'), ['0', 'root']);
      // debootstrap leaves no /etc/hosts: the agent's one names localhost and the sandbox, so sudo has nothing to say.
      assert.equal(sudo.stderr, '', 'sudo resolves the sandbox\'s hostname');
      const names = await exec(id, 'getent hosts localhost; getent hosts "$(hostname)"; python3 -c "import socket; print(socket.gethostbyname(\'localhost\'))"');
      assert.equal(names.exitCode, 0, names.stderr);
      assert.match(names.stdout, new RegExp(`^127\\.0\\.1\\.1\\s+${id}$`, 'm'));
      assert.match(names.stdout, /^127\.0\.0\.1$/m);
      // pip and venv are there, and pip installs (as user, to ~/.local) rather than refusing with PEP 668.
      const project = '[project]\\nname = \\"hello\\"\\nversion = \\"1.0\\"\\n[build-system]\\nrequires = [\\"setuptools\\"]\\nbuild-backend = \\"setuptools.build_meta\\"\\n';
      const pip = await exec(
        id,
        `pip --version && python3 -m venv /tmp/venv && /tmp/venv/bin/python -m pip --version && mkdir -p /tmp/pkg/hello && ` +
          `printf 'def hi():\\n    return 42\\n' > /tmp/pkg/hello/__init__.py && printf "${project}" > /tmp/pkg/pyproject.toml && ` +
          `pip install --no-index --no-build-isolation /tmp/pkg && cd / && python3 -c 'import hello; print(hello.hi())'`,
      );
      assert.equal(pip.exitCode, 0, `${pip.stdout}\n${pip.stderr}`);
      assert.match(pip.stdout, /^pip \d+/m);
      assert.match(pip.stdout, /\n42\n$/);
      // Root through sudo is the sandbox's root: no mounts, no kernel knobs, no more capabilities than the sandbox set.
      const confined = await exec(id, 'sudo -n mount -t tmpfs none /mnt; echo mount=$?; sudo -n sh -c "echo 1 > /proc/sys/kernel/sysrq" 2>/dev/null; echo sysrq=$?; sudo -n grep CapBnd /proc/self/status');
      assert.match(confined.stdout, /mount=[1-9]/);
      assert.match(confined.stdout, /sysrq=[1-9]/);
      const bnd = /CapBnd:\s+([0-9a-f]+)/.exec(confined.stdout)?.[1];
      assert.ok(bnd && (BigInt(`0x${bnd}`) & (1n << 21n)) === 0n, `CAP_SYS_ADMIN must stay out of the bounding set (${bnd})`);
      // An explicit user still wins over the template's.
      assert.equal((await exec(id, 'id -u', { user: 'root' })).stdout, '0\n');
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
    }
  });

  it('under gVisor a base sandbox is made and runs as user, but sudo fails (runsc always sets no_new_privs; README, ADR 0010)', { skip: runscMissing() }, async () => {
    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'base', isolation: 'gvisor' });
    assert.equal(r.status, 201, r.text);
    const id = r.json.id as string;
    try {
      assert.equal(r.json.isolation, 'gvisor');
      // (gVisor's /proc/<pid>/status has no NoNewPrivs line to check.)
      const who = await exec(id, 'id -un; pwd; python3 -c "print(6*7)"');
      assert.equal(who.exitCode, 0, JSON.stringify(who));
      assert.equal(who.stdout, 'user\n/home/user\n42\n');
      const sudo = await exec(id, 'sudo -n id -u');
      assert.notEqual(sudo.exitCode, 0, `sudo cannot raise privileges under gVisor: ${JSON.stringify(sudo)}`);
      assert.doesNotMatch(sudo.stdout, /^0$/m);
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
    }
  });

  it('in a microVM sudo works too: the guest init leaves no_new_privs off for a template that asks for it (capsule.setuid=1)', { skip: microvmSkip() }, async () => {
    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'base', isolation: 'microvm' });
    assert.equal(r.status, 201, r.text);
    const id = r.json.id as string;
    try {
      assert.equal(r.json.isolation, 'microvm');
      const who = await exec(id, 'id -un; grep NoNewPrivs /proc/self/status');
      assert.match(who.stdout, /^user\nNoNewPrivs:\s+0\n$/);
      const sudo = await exec(id, 'sudo -n id -u');
      assert.equal(sudo.exitCode, 0, JSON.stringify(sudo));
      assert.equal(sudo.stdout, '0\n');
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
    }
  });

  it('keeps no_new_privs on for templates that do not ask for sudo', async () => {
    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    assert.equal(r.status, 201, r.text);
    const id = r.json.id as string;
    try {
      const nnp = await exec(id, 'grep NoNewPrivs /proc/self/status');
      assert.match(nnp.stdout, /NoNewPrivs:\s+1/);
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
    }
  });

  it('is a base other templates build on, keeping its user and sudo', async () => {
    const b = await api(d.url, 'POST', '/v1/templates?follow=true', {
      name: 'on-base',
      definition: { from: 'base', steps: [{ type: 'run', command: 'id -un > /tmp/builder; sudo -n sh -c "echo from-sudo > /opt/made"' }] },
    });
    const last = JSON.parse(b.text.trim().split('\n').pop()!);
    assert.equal(last.build?.status, 'succeeded', b.text.slice(-2000));
    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'on-base' });
    assert.equal(r.status, 201, r.text);
    const id = r.json.id as string;
    try {
      const out = await exec(id, 'cat /tmp/builder /opt/made; id -un; sudo -n true && echo sudo-ok');
      assert.deepEqual(out.stdout.trim().split('\n'), ['user', 'from-sudo', 'user', 'sudo-ok']);
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
    }
  });
});

describe('an MCP call that needs a template still being built', { skip, timeout: 5 * 60_000 }, () => {
  it('answers "still building, try again" without stopping the build, and a retry gets the sandbox', async () => {
    const dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir, env: { CAPSULE_MCP_TEMPLATE_WAIT_MS: '300' } });
    const c = await connectClient('http', d);
    try {
      const first = await c.client.callTool('sandbox_create', { template: 'base' });
      assert.equal(first.isError, true, JSON.stringify(first));
      assert.match(JSON.stringify(first.content), /still being built/);
      // The build went on without anyone waiting for it.
      const t = await api(d.url, 'GET', '/v1/templates/base');
      assert.equal(t.json.status, 'building');
      const deadline = Date.now() + 4 * 60_000;
      while ((await api(d.url, 'GET', '/v1/templates/base')).json.status !== 'ready') {
        assert.ok(Date.now() < deadline, 'the build never finished');
        await new Promise((r) => setTimeout(r, 250));
      }
      const again = await c.client.callTool('sandbox_create', { template: 'base' });
      assert.notEqual(again.isError, true, JSON.stringify(again));
      const id = (again.structuredContent as { sandbox_id?: string; id?: string }).sandbox_id ?? (again.structuredContent as { id?: string }).id;
      assert.ok(id, JSON.stringify(again.structuredContent));
      await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
    } finally {
      await c.close();
      await d.stop();
      await removeDataDir(dataDir);
    }
  });
});
