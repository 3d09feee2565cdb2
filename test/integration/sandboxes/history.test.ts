/**
 * History retention through a real daemon (CAPSULE_HISTORY_RETENTION_MS): a killed sandbox stays
 * readable (info, log) for the retention, then its record and log are gone and its id answers 404,
 * while a running sandbox created before it is untouched.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { api, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('ended sandboxes past history retention', () => {
  let d: TestDaemon;
  before(async () => {
    d = await startTestDaemon({ env: { CAPSULE_HISTORY_RETENTION_MS: '3000' } });
  });
  after(async () => {
    await d?.stop();
  });

  it('keeps a killed sandbox readable for the retention, then answers 404 for it; a live one stays', async () => {
    const live = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', timeoutMs: 120_000 });
    assert.equal(live.status, 201, live.text);
    const made = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    assert.equal(made.status, 201, made.text);
    const id = made.json.id as string;
    const ran = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: ['echo', 'hi'] });
    assert.equal(ran.status, 200, ran.text);
    assert.equal((await api(d.url, 'DELETE', `/v1/sandboxes/${id}`)).status, 200);

    const ended = await api(d.url, 'GET', `/v1/sandboxes/${id}`);
    assert.equal(ended.status, 200, 'an ended sandbox is readable at first');
    assert.equal(ended.json.state, 'killed');
    const logs = await api(d.url, 'GET', `/v1/sandboxes/${id}/logs`);
    assert.equal(logs.status, 200, logs.text);
    assert.ok(logs.json.entries.some((e: { event: string }) => e.event === 'state.killed'), logs.text);

    const t0 = Date.now();
    let status = 200;
    while (status === 200 && Date.now() - t0 < 20_000) {
      await sleep(250);
      status = (await api(d.url, 'GET', `/v1/sandboxes/${id}`)).status;
    }
    assert.equal(status, 404, 'the record goes once past retention');
    assert.ok(Date.now() - t0 >= 2500, `not before the retention (${Date.now() - t0} ms)`);
    const gone = await api(d.url, 'GET', `/v1/sandboxes/${id}/logs`);
    assert.equal(gone.status, 404, gone.text);
    assert.equal(gone.json.error.code, 'not_found');

    const still = await api(d.url, 'GET', `/v1/sandboxes/${live.json.id}`);
    assert.equal(still.json.state, 'running');
    const echo = await api(d.url, 'POST', `/v1/sandboxes/${live.json.id}/commands`, { cmd: ['echo', 'ok'] });
    assert.equal(echo.json.stdout, 'ok\n');
    await api(d.url, 'DELETE', `/v1/sandboxes/${live.json.id}`);
  });
});
