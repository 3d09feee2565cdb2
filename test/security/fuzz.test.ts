/**
 * Property-based abuse of every endpoint: 1,200 malformed or hostile requests
 * (wrong types, huge values, deep JSON, invalid UTF-8, path tricks, unknown
 * fields, missing or bad auth). Every answer must be a 4xx JSON error with a
 * code, never a 5xx; the daemon must still answer and a sandbox still work.
 * Against each isolation kind: the requests that reach a sandbox go through
 * that backend's driver and agent transport (a microVM's mux relay).
 */
import { after, before, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { api, authHeaders, type TestDaemon } from '../helpers/daemon.js';
import { forEachIsolation, startBattery, stopBattery, type Battery } from './helpers.js';

let b: Battery | undefined;
let d: TestDaemon;
let id: string;

const ROUTES: Array<{ method: string; path: (id: string) => string }> = [
  { method: 'POST', path: () => '/v1/sandboxes' },
  { method: 'GET', path: () => '/v1/sandboxes' },
  { method: 'GET', path: (i) => `/v1/sandboxes/${i}` },
  { method: 'DELETE', path: (i) => `/v1/sandboxes/${i}` },
  { method: 'POST', path: (i) => `/v1/sandboxes/${i}/timeout` },
  { method: 'POST', path: (i) => `/v1/sandboxes/${i}/commands` },
  { method: 'GET', path: (i) => `/v1/sandboxes/${i}/commands` },
  { method: 'POST', path: (i) => `/v1/sandboxes/${i}/commands/1/stdin` },
  { method: 'POST', path: (i) => `/v1/sandboxes/${i}/commands/1/signal` },
  { method: 'DELETE', path: (i) => `/v1/sandboxes/${i}/commands/1` },
  { method: 'GET', path: (i) => `/v1/sandboxes/${i}/commands/1/wait` },
  { method: 'GET', path: (i) => `/v1/sandboxes/${i}/files` },
  { method: 'PUT', path: (i) => `/v1/sandboxes/${i}/files` },
  { method: 'DELETE', path: (i) => `/v1/sandboxes/${i}/files` },
  { method: 'GET', path: (i) => `/v1/sandboxes/${i}/files/list` },
  { method: 'GET', path: (i) => `/v1/sandboxes/${i}/files/stat` },
  { method: 'POST', path: (i) => `/v1/sandboxes/${i}/files/mkdir` },
  { method: 'POST', path: (i) => `/v1/sandboxes/${i}/files/rename` },
  { method: 'POST', path: () => '/v1/keys' },
  { method: 'DELETE', path: () => '/v1/keys/key_0000000000000000' },
  { method: 'POST', path: () => '/v1/templates/nope/build' },
];

/** Things a hostile caller puts where a value should go. */
const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.string(),
  fc.string({ unit: 'binary', maxLength: 64 }),
  fc.integer(),
  fc.double(),
  fc.constantFrom(1e308, -1, 0, 2 ** 53 + 1, Number.MAX_SAFE_INTEGER, null, true, '', '\u0000', '../../../../etc/shadow', '/proc/1/root/etc/shadow', 'a'.repeat(70_000)),
  fc.array(fc.string(), { maxLength: 5 }),
  fc.dictionary(fc.string({ maxLength: 8 }), fc.string({ maxLength: 8 }), { maxKeys: 4 }),
);
const FIELDS = ['template', 'timeoutMs', 'envs', 'metadata', 'resources', 'cmd', 'cwd', 'user', 'stdin', 'background', 'stream', 'path', 'from', 'to', 'data', 'signal', 'eof', 'name', 'admin', 'limits', 'constructor', '__proto__'];
const hostileBody = fc.oneof(
  fc.dictionary(fc.constantFrom(...FIELDS), hostileValue, { maxKeys: 5 }).map((o) => JSON.stringify(o)),
  fc.constantFrom('{', '[]', 'null', '"x"', '{"a":' + '['.repeat(5000) + ']'.repeat(5000) + '}', '\xff\xfe{}', '{"cmd":"\ud800"}'),
  fc.string({ maxLength: 200 }),
);
const hostileQuery = fc.oneof(
  fc.constant(''),
  fc.dictionary(fc.constantFrom('path', 'limit', 'recursive', 'mode', 'state', 'timeoutMs', 'force', 'metadata.x', 'x'), fc.oneof(fc.string({ maxLength: 30 }), fc.constantFrom('%00', '..%2F..%2Fetc', '-1', '1e99', 'true', '/dev/zero', '/proc/self/fd/0')), { maxKeys: 3 }).map(
    (q) => '?' + Object.entries(q).map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join('&'),
  ),
  fc.constantFrom('?path=%ff%fe', '?path=' + 'a/'.repeat(3000), '?path=%2Fproc%2Fself%2Froot', '?limit=0&limit=1'),
);
const hostileId = fc.oneof(fc.constant('ID'), fc.constantFrom('sbx-000000000000', '..', '%2e%2e', 'sbx-' + 'a'.repeat(500), '%00'));
const auth = fc.constantFrom<'admin' | 'none' | 'bad' | 'malformed'>('admin', 'admin', 'admin', 'none', 'bad', 'malformed');

forEachIsolation('fuzzing every endpoint', (isolation) => {
  before(async () => {
    b = await startBattery(isolation);
    d = b.d;
    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    assert.equal(r.status, 201, r.text);
    id = r.json.id;
  });
  after(async () => {
    await stopBattery(b);
  });

  it('answers 1,200 hostile requests with 4xx JSON errors, never 5xx', { timeout: 240_000 }, async () => {
    let sent = 0;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...ROUTES), hostileId, hostileQuery, hostileBody, auth, fc.boolean(), async (route, rawId, query, body, who, asJson) => {
        const target = rawId === 'ID' ? id : rawId;
        const headers: Record<string, string> =
          who === 'admin' ? authHeaders(d.url) : who === 'bad' ? { authorization: 'Bearer cap_wrong' } : who === 'malformed' ? { authorization: 'Bearer' } : {};
        headers['content-type'] = asJson ? 'application/json' : 'application/octet-stream';
        const hasBody = route.method !== 'GET' && route.method !== 'DELETE';
        const r = await fetch(d.url + route.path(target) + query, {
          method: route.method,
          headers,
          ...(hasBody ? { body: Buffer.from(body, 'latin1') } : {}),
        });
        const text = await r.text();
        sent++;
        // A hostile request may still be a valid one (e.g. a GET of a real file): what matters is never a 5xx.
        assert.ok(r.status < 500, `${route.method} ${route.path(target)}${query} → ${r.status}: ${text.slice(0, 300)}`);
        if (r.status >= 400) {
          const j = JSON.parse(text) as { error?: { code?: unknown } };
          assert.equal(typeof j.error?.code, 'string', text.slice(0, 300));
        }
      }),
      { numRuns: 1200, seed: 4242 },
    );
    assert.equal(sent, 1200);
    const h = await api(d.url, 'GET', '/v1/health');
    assert.equal(h.json.status, 'ok');
    // The sandbox may have been killed or timed-out by a fuzzed request; a new one must still work.
    const sb = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    assert.equal(sb.status, 201, sb.text);
    const r = await api(d.url, 'POST', `/v1/sandboxes/${sb.json.id}/commands`, { cmd: 'echo alive' });
    assert.equal(r.json.stdout, 'alive\n');
  });
}, { microvm: true });
