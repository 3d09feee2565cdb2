/**
 * The `debian-trixie` built-in (`debian:trixie`): debootstrapped from the host's
 * mirror although the host's apt sources name only bookworm, cached per
 * machine through CAPSULE_TEMPLATE_CACHE like debian, and usable as the base
 * of a user template.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { api, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { debootstrapSkip } from '../../helpers/debootstrap.js';

const skip = debootstrapSkip();

let d: TestDaemon;

async function exec(id: string, cmd: string): Promise<{ stdout: string; stderr: string; exitCode: number }> {
  const r = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd });
  assert.equal(r.status, 200, r.text);
  return r.json;
}

describe('the debian:trixie base', { skip, timeout: 15 * 60_000 }, () => {
  before(async () => {
    const dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir });
  });
  after(async () => {
    await d?.stop();
    if (d) await removeDataDir(d.dataDir);
  });

  it('starts a sandbox on Debian 13 with python3, and a user template stacks on it', async () => {
    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'debian-trixie' });
    assert.equal(r.status, 201, r.text);
    const id = r.json.id as string;
    try {
      const v = await exec(id, '. /etc/os-release; echo $VERSION_CODENAME; cut -d. -f1 /etc/debian_version; python3 -c "import sys; print(sys.version_info >= (3, 12))"');
      assert.equal(v.exitCode, 0, v.stderr);
      assert.deepEqual(v.stdout.trim().split('\n'), ['trixie', '13', 'True']);
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
    }
    const info = await api(d.url, 'GET', '/v1/templates/debian-trixie');
    assert.equal(info.status, 200, info.text);
    assert.equal(info.json.name, 'debian-trixie');
    assert.equal(info.json.status, 'ready');

    const b = await api(d.url, 'POST', '/v1/templates?follow=true', {
      name: 'on-trixie',
      definition: { from: 'debian:trixie', steps: [{ type: 'run', command: 'cat /etc/debian_version > /built-on' }] },
    });
    assert.equal(b.status, 200, b.text);
    const last = JSON.parse(b.text.trim().split('\n').pop()!);
    assert.equal(last.build.status, 'succeeded', b.text.slice(-2000));
    const s = await api(d.url, 'POST', '/v1/sandboxes', { template: 'on-trixie' });
    assert.equal(s.status, 201, s.text);
    try {
      assert.match((await exec(s.json.id, 'cat /built-on')).stdout, /^13\./);
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${s.json.id}`);
    }
  });
});
