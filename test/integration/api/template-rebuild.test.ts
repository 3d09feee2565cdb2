/**
 * A forced template rebuild while a sandbox runs on the old tree: the running
 * sandbox keeps working on its tree, new sandboxes get the new one, and the
 * old tree is deleted as soon as the last sandbox on it is gone.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { api, authHeaders, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';

function oldTrees(d: TestDaemon): string[] {
  return fs.readdirSync(path.join(d.dataDir, 'templates', 'busybox')).filter((e) => e.startsWith('old-'));
}

async function sh(d: TestDaemon, id: string, cmd: string) {
  const r = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd });
  assert.equal(r.status, 200, r.text);
  return r.json as { stdout: string; exitCode: number };
}

describe('forced template rebuild', () => {
  let d: TestDaemon;
  before(async () => {
    d = await startTestDaemon();
  });
  after(async () => {
    await d?.stop();
  });

  it('keeps the old tree while a sandbox uses it, and removes it once that sandbox is gone', async () => {
    const a = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    assert.equal(a.status, 201, a.text);
    await sh(d, a.json.id, 'echo before > /marker');

    const r = await fetch(`${d.url}/v1/templates/busybox/build?force=true`, { method: 'POST', headers: authHeaders(d.url) });
    const events = (await r.text()).trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(events.at(-1).type, 'done', JSON.stringify(events.at(-1)));
    assert.equal(oldTrees(d).length, 1, 'the replaced tree is kept while sandbox A sits on it');

    // A still works on its own (old) tree; B starts on the new one.
    assert.equal((await sh(d, a.json.id, 'cat /marker; ls /bin/sh >/dev/null && echo ok')).stdout, 'before\nok\n');
    const b = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    assert.equal(b.status, 201, b.text);
    assert.equal((await sh(d, b.json.id, 'echo hi')).stdout, 'hi\n');

    await api(d.url, 'DELETE', `/v1/sandboxes/${a.json.id}`);
    for (let i = 0; i < 50 && oldTrees(d).length > 0; i++) await new Promise((res) => setTimeout(res, 50));
    assert.deepEqual(oldTrees(d), [], 'the old tree went with its last sandbox');
    assert.equal((await sh(d, b.json.id, 'echo still')).stdout, 'still\n', 'B (on the new tree) is untouched');
    await api(d.url, 'DELETE', `/v1/sandboxes/${b.json.id}`);
  });
});
