/** Every endpoint answers bad input with a 4xx and a JSON error code, and the daemon keeps answering. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { api, startTestDaemon, type TestDaemon } from '../../helpers/daemon.js';

let d: TestDaemon;
let id: string;
const ghost = 'sbx-000000000000';

describe('bad input', () => {
  before(async () => {
    d = await startTestDaemon();
    const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'busybox' });
    assert.equal(r.status, 201, r.text);
    id = r.json.id;
  });
  after(async () => {
    await d?.stop();
  });

  const cases: Array<[string, string, () => string, unknown?, Record<string, string>?]> = [
    ['POST', 'create: unknown field', () => '/v1/sandboxes', { template: 'busybox', bogus: 1 }],
    ['POST', 'create: wrong type', () => '/v1/sandboxes', { template: 42 }],
    ['POST', 'create: unknown template', () => '/v1/sandboxes', { template: 'nope' }],
    ['POST', 'create: timeout too small', () => '/v1/sandboxes', { template: 'busybox', timeoutMs: 5 }],
    ['POST', 'create: timeout huge', () => '/v1/sandboxes', { template: 'busybox', timeoutMs: 1e15 }],
    ['POST', 'create: bad env name', () => '/v1/sandboxes', { template: 'busybox', envs: { 'A=B': 'x' } }],
    ['POST', 'create: env with NUL', () => '/v1/sandboxes', { template: 'busybox', envs: { A: 'x\u0000y' } }],
    ['POST', 'create: negative memory', () => '/v1/sandboxes', { template: 'busybox', resources: { memoryMb: -1 } }],
    ['POST', 'create: malformed JSON', () => '/v1/sandboxes', '{"template":', { 'content-type': 'application/json' }],
    ['POST', 'create: array body', () => '/v1/sandboxes', [1, 2, 3]],
    ['GET', 'get: malformed id', () => '/v1/sandboxes/../../etc'],
    ['GET', 'get: unknown id', () => `/v1/sandboxes/${ghost}`],
    ['GET', 'list: unknown state', () => '/v1/sandboxes?state=zombie'],
    ['GET', 'list: unknown parameter', () => '/v1/sandboxes?color=red'],
    ['DELETE', 'kill: unknown id', () => `/v1/sandboxes/${ghost}`],
    ['POST', 'timeout: missing field', () => `/v1/sandboxes/${id}/timeout`, {}],
    ['POST', 'timeout: string', () => `/v1/sandboxes/${id}/timeout`, { timeoutMs: 'soon' }],
    ['POST', 'run: empty cmd', () => `/v1/sandboxes/${id}/commands`, { cmd: '' }],
    ['POST', 'run: empty argv', () => `/v1/sandboxes/${id}/commands`, { cmd: [] }],
    ['POST', 'run: NUL in argv', () => `/v1/sandboxes/${id}/commands`, { cmd: ['echo', 'a\u0000b'] }],
    ['POST', 'run: bad user', () => `/v1/sandboxes/${id}/commands`, { cmd: 'true', user: 'a b' }],
    ['POST', 'run: unknown user', () => `/v1/sandboxes/${id}/commands`, { cmd: 'true', user: 'nobody-here' }],
    ['POST', 'run: missing cwd', () => `/v1/sandboxes/${id}/commands`, { cmd: 'true', cwd: '/does/not/exist' }],
    ['POST', 'run: negative timeout', () => `/v1/sandboxes/${id}/commands`, { cmd: 'true', timeoutMs: -1 }],
    ['POST', 'run: unknown sandbox', () => `/v1/sandboxes/${ghost}/commands`, { cmd: 'true' }],
    ['GET', 'processes: unknown sandbox', () => `/v1/sandboxes/${ghost}/commands`],
    ['POST', 'stdin: unknown pid', () => `/v1/sandboxes/${id}/commands/999999/stdin`, { data: 'x' }],
    ['POST', 'stdin: pid not a number', () => `/v1/sandboxes/${id}/commands/abc/stdin`, { data: 'x' }],
    ['POST', 'signal: unknown signal', () => `/v1/sandboxes/${id}/commands/1/signal`, { signal: 'SIGNOPE' }],
    ['DELETE', 'kill process: unknown pid', () => `/v1/sandboxes/${id}/commands/999999`],
    ['GET', 'wait: unknown pid', () => `/v1/sandboxes/${id}/commands/999999/wait`],
    ['GET', 'wait: bad timeout', () => `/v1/sandboxes/${id}/commands/1/wait?timeoutMs=-5`],
    ['GET', 'stream: unknown pid', () => `/v1/sandboxes/${id}/commands/999999/stream`],
    ['GET', 'read: missing path', () => `/v1/sandboxes/${id}/files`],
    ['GET', 'read: missing file', () => `/v1/sandboxes/${id}/files?path=/nope`],
    ['GET', 'read: a directory', () => `/v1/sandboxes/${id}/files?path=/etc`],
    ['PUT', 'write: onto a directory', () => `/v1/sandboxes/${id}/files?path=/etc`, 'x', { 'content-type': 'application/octet-stream' }],
    ['PUT', 'write: bad mode', () => `/v1/sandboxes/${id}/files?path=/tmp/x&mode=999`, 'x', { 'content-type': 'application/octet-stream' }],
    ['PUT', 'write: JSON body', () => `/v1/sandboxes/${id}/files?path=/tmp/x`, { not: 'bytes' }],
    ['GET', 'list: not a directory', () => `/v1/sandboxes/${id}/files/list?path=/etc/passwd`],
    ['GET', 'list: bad limit', () => `/v1/sandboxes/${id}/files/list?path=/&limit=0`],
    ['GET', 'stat: path too long', () => `/v1/sandboxes/${id}/files/stat?path=/${'a'.repeat(5000)}`],
    ['POST', 'mkdir: no path', () => `/v1/sandboxes/${id}/files/mkdir`, {}],
    ['POST', 'mkdir: under a file', () => `/v1/sandboxes/${id}/files/mkdir`, { path: '/etc/passwd/sub' }],
    ['DELETE', 'remove: missing', () => `/v1/sandboxes/${id}/files?path=/nope/nope`],
    ['POST', 'rename: missing source', () => `/v1/sandboxes/${id}/files/rename`, { from: '/nope', to: '/nope2' }],
    ['POST', 'rename: extra field', () => `/v1/sandboxes/${id}/files/rename`, { from: '/a', to: '/b', c: 1 }],
    ['POST', 'template build: unknown', () => '/v1/templates/nope/build'],
    ['GET', 'no such route', () => '/v1/nothing-here'],
    ['PATCH', 'wrong method', () => '/v1/sandboxes'],
  ];

  for (const [method, name, path, body, headers] of cases) {
    it(`${name} → 4xx with a code`, async () => {
      const r = await api(d.url, method, path(), body, headers);
      assert.ok(r.status >= 400 && r.status < 500, `${method} ${path()}: status ${r.status}: ${r.text}`);
      assert.equal(typeof r.json?.error?.code, 'string', r.text);
      assert.equal(typeof r.json?.error?.message, 'string');
    });
  }

  it('still answers and the sandbox still works afterwards', async () => {
    const h = await api(d.url, 'GET', '/v1/health');
    assert.equal(h.json.status, 'ok');
    const r = await api(d.url, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: 'echo alive' });
    assert.equal(r.json.stdout, 'alive\n');
  });

  it('serves an OpenAPI 3.1 document built from the same schemas', async () => {
    const r = await api(d.url, 'GET', '/v1/openapi.json');
    assert.equal(r.json.openapi, '3.1.0');
    const create = r.json.paths['/v1/sandboxes'].post;
    assert.ok(create.requestBody.content['application/json'].schema.properties.template);
    assert.equal(create.requestBody.content['application/json'].schema.additionalProperties, false);
    for (const p of ['/v1/sandboxes/{id}/commands', '/v1/sandboxes/{id}/files', '/v1/sandboxes/{id}/files/list', '/v1/templates']) {
      assert.ok(r.json.paths[p], `${p} documented`);
    }
  });
});
