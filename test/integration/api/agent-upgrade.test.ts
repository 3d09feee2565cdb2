/**
 * A daemon upgrade meets the agents of the previous build: each sandbox keeps
 * the agent binary it was created with (a copy of `<data>/bin/capsule-agent`),
 * while a new daemon installs its own there. Agents of an older protocol minor
 * and of another major are built from these sources with version macros
 * (scripts/build-agent.mjs --out); the old one is put in place after the first
 * daemon installed its own, so the sandbox created next gets it.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { Sandbox } from '../../../src/sdk/index.js';
import { api, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { AGENT_BINARY, buildAgentVariant } from '../../unit/agent/helpers.js';

/** Replace the daemon's installed agent (what the next created sandbox gets a copy of). */
function installAgent(dataDir: string, binary: string): void {
  const target = path.join(dataDir, 'bin', 'capsule-agent');
  fs.copyFileSync(binary, `${target}.tmp`);
  fs.chmodSync(`${target}.tmp`, 0o755);
  fs.renameSync(`${target}.tmp`, target);
}

async function sh(d: TestDaemon, id: string, cmd: string, extra: Record<string, unknown> = {}) {
  const r = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd, ...extra });
  assert.equal(r.status, 200, `${cmd}: ${r.text}\n${d.log().slice(-2000)}`);
  return r.json as { stdout: string; stderr: string; exitCode: number };
}

/** The version of the agent that is pid 1 of the sandbox (its binary answers --version). */
async function agentVersion(d: TestDaemon, id: string): Promise<string> {
  return (await sh(d, id, '"$(tr "\\000" " " < /proc/1/cmdline | cut -d" " -f1)" --version')).stdout.trim();
}

describe('daemon upgrade with sandboxes of older agents', () => {
  let d: TestDaemon | undefined;
  let dataDir: string;
  let variants: string;

  before(() => {
    dataDir = tempDataDir();
    variants = fs.mkdtempSync(path.join(path.dirname(dataDir), 'capsule-agent-variants-'));
  });
  after(async () => {
    await d?.stop();
    await removeDataDir(dataDir);
    fs.rmSync(variants, { recursive: true, force: true });
  });

  it('adopts a sandbox whose agent speaks protocol 1.0, and it keeps working', async () => {
    d = await startTestDaemon({ dataDir });
    // CAPSULE_TEST_AGENT_1_0 may name a real 1.0 agent (e.g. built from the first release) instead of the variant.
    installAgent(dataDir, process.env.CAPSULE_TEST_AGENT_1_0 || buildAgentVariant(variants, 'v1.0'));
    const created = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', timeoutMs: 300_000 });
    assert.equal(created.status, 201, created.text);
    const id = created.json.id as string;
    assert.equal(await agentVersion(d, id), 'capsule-agent/0.1.0');
    await sh(d, id, 'echo before > /tmp/state');
    const bg = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: 'sleep 2; echo bg-done', background: true });
    assert.equal(bg.status, 202, bg.text);

    // The upgrade: stop the daemon, leaving the sandbox running; the new daemon installs the current agent.
    await d.stop({ keepSandboxes: true });
    d = await startTestDaemon({ dataDir });
    assert.ok(fs.readFileSync(path.join(dataDir, 'bin', 'capsule-agent')).equals(fs.readFileSync(AGENT_BINARY)), 'the new daemon installed its agent');

    const got = await api(d.url, 'GET', `/v1/sandboxes/${id}`);
    assert.equal(got.json.state, 'running', `${got.text}\n${d.log().slice(-3000)}`);
    assert.equal(await agentVersion(d, id), 'capsule-agent/0.1.0', 'the sandbox kept its agent');
    // Commands: buffered, with stdin, streamed, and the background one started before the upgrade (ATTACH).
    assert.equal((await sh(d, id, 'cat /tmp/state')).stdout, 'before\n');
    assert.equal((await sh(d, id, 'wc -c', { stdin: 'x'.repeat(100_000) })).stdout.trim(), '100000');
    const stream = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: 'echo a; echo b >&2; exit 3', stream: true });
    const events = stream.text.trim().split('\n').map((l) => JSON.parse(l) as { type: string; exitCode?: number });
    assert.deepEqual(events.at(-1), { type: 'exit', exitCode: 3 });
    const w = await api(d.url, 'GET', `/v1/sandboxes/${id}/commands/${bg.json.pid}/wait?timeoutMs=10000`);
    assert.equal(w.status, 200, w.text);
    assert.equal(w.json.stdout, 'bg-done\n');
    // Files: a multi-frame upload and download at the 1.0 frame size, list, stat.
    const data = Buffer.alloc(3_000_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
    const put = await api(d.url, 'PUT', `/v1/sandboxes/${id}/files?path=/tmp/big.bin`, data);
    assert.equal(put.status, 200, put.text);
    const res = await fetch(`${d.url}/v1/sandboxes/${id}/files?path=/tmp/big.bin`, { headers: authOf(d) });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-length'), String(data.length));
    assert.ok(Buffer.from(await res.arrayBuffer()).equals(data));
    const list = await api(d.url, 'GET', `/v1/sandboxes/${id}/files/list?path=/tmp`);
    assert.deepEqual(list.json.entries.map((e: { name: string }) => e.name).sort(), ['big.bin', 'state']);
    // The SDK's raw upload (Upgrade: capsule-upload) to an agent without file-handoff: relayed as DATA frames.
    const viaSdk = await Sandbox.connect(id, { apiUrl: d.url });
    assert.deepEqual(await viaSdk.files.write('/tmp/raw.bin', data), { path: '/tmp/raw.bin', size: data.length });
    assert.ok(Buffer.from(await viaSdk.files.read('/tmp/raw.bin', { format: 'bytes' })).equals(data));

    // A sandbox created now gets the new agent.
    const fresh = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    assert.equal(fresh.status, 201, fresh.text);
    assert.equal(await agentVersion(d, fresh.json.id), 'capsule-agent/0.5.0');
    await api(d.url, 'DELETE', `/v1/sandboxes/${fresh.json.id}`);
    await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
  });

  it('refuses a sandbox whose agent speaks another major version, with a clear reason and nothing left behind', async () => {
    d ??= await startTestDaemon({ dataDir });
    installAgent(dataDir, buildAgentVariant(variants, 'v2.0'));
    try {
      const t0 = Date.now();
      const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
      assert.ok(Date.now() - t0 < 15_000, 'the create failed at the handshake, not by a timeout');
      assert.equal(r.status, 422, r.text);
      assert.equal(r.json.error.code, 'sandbox_error');
      assert.match(r.json.error.message, /\(capsule-agent\/2\.0\.0, protocol 2\.0\) is not compatible with this daemon \(protocol 1\.4\)/);
      const failed = await api(d.url, 'GET', '/v1/sandboxes?state=failed');
      const rec = (failed.json.sandboxes as Array<{ id: string; state: string; endReason?: string }>).find((s) => /capsule-agent\/2\.0\.0/.test(s.endReason ?? ''));
      assert.ok(rec, `a failed record with the reason: ${failed.text}`);
      assert.equal(rec.state, 'failed');
      assert.match(rec.endReason!, /^create failed: the agent in sandbox \S+ \(capsule-agent\/2\.0\.0, protocol 2\.0\) is not compatible/);
      assert.equal(fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(rec.id), false, 'no mounts left');
      assert.equal(fs.existsSync(path.join(dataDir, 'sandboxes', rec.id)), false, 'no sandbox dir left');
    } finally {
      installAgent(dataDir, AGENT_BINARY);
    }
  });
});

function authOf(d: TestDaemon): Record<string, string> {
  return d.adminKey ? { authorization: `Bearer ${d.adminKey}` } : {};
}
