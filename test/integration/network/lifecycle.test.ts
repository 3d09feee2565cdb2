/**
 * Egress across the lifecycle: a stopped sandbox's relay goes with its network
 * namespace; start makes a new namespace and a new relay, and the policy holds
 * in it. A paused sandbox keeps its relay.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { api, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';
import { startInternet, type Internet } from '../../helpers/internet.js';
import { netRelays } from '../../helpers/leftovers.js';

let d: TestDaemon;
let web: Internet;

async function sh(id: string, cmd: string): Promise<string> {
  const r = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd, timeoutMs: 20_000 });
  assert.equal(r.status, 200, r.text);
  return r.json.stdout as string;
}

function get(name: string): string {
  const port = web.sites[name]!.httpPort;
  return `ip=$(nslookup ${name} | awk '/^Address/ {a=$2} END {print a}'); printf 'GET / HTTP/1.0\\r\\nHost: ${name}\\r\\n\\r\\n' | nc -w 5 $ip ${port} | head -1`;
}

describe('egress across pause, stop and start', { timeout: 180_000 }, () => {
  before(async () => {
    web = await startInternet(['allowed.test', 'other.test']);
    d = await startTestDaemon({ env: { CAPSULE_NET_TEST_INTERNET: web.env } });
  });
  after(async () => {
    await d?.stop();
    await web?.close();
  });

  it('keeps the policy through pause/resume and stop/start, with one relay at a time', async () => {
    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox', network: { egress: { allow: ['allowed.test'] } } });
    assert.equal(r.status, 201, r.text);
    const id = r.json.id as string;
    try {
      assert.match(await sh(id, get('allowed.test')), /^HTTP\/1\.[01] 200/);
      assert.equal(netRelays(id).length, 1);

      assert.equal((await api(d.url, 'POST', `/v1/sandboxes/${id}/pause`)).status, 200);
      assert.equal((await api(d.url, 'POST', `/v1/sandboxes/${id}/resume`)).status, 200);
      assert.match(await sh(id, get('allowed.test')), /^HTTP\/1\.[01] 200/);

      const hitsBefore = web.sites['allowed.test']!.hits.http;
      assert.equal((await api(d.url, 'POST', `/v1/sandboxes/${id}/stop`)).status, 200);
      assert.deepEqual(netRelays(id), [], 'the relay went with the stopped container');
      assert.equal((await api(d.url, 'POST', `/v1/sandboxes/${id}/start`)).status, 200);
      assert.equal(netRelays(id).length, 1, 'one new relay');
      assert.match(await sh(id, get('allowed.test')), /^HTTP\/1\.[01] 200/);
      assert.equal(web.sites['allowed.test']!.hits.http, hitsBefore + 1);
      // Still refused what the policy refuses.
      const otherBefore = web.sites['other.test']!.hits.http;
      assert.doesNotMatch(await sh(id, get('other.test')), /HTTP/);
      assert.equal(web.sites['other.test']!.hits.http, otherBefore);
    } finally {
      await api(d.url, 'DELETE', `/v1/sandboxes/${id}`);
    }
    assert.deepEqual(netRelays(id), []);
  });
});
