/** The HTTP edge's error mapping, with stand-in services (pure mapping logic, no runtime). */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildServer } from '../../../src/api/server.js';
import type { Services } from '../../../src/api/services.js';
import { NotFoundError } from '../../../src/errors/index.js';

function services(overrides: Record<string, unknown> = {}): Services {
  const boom = () => {
    throw new Error('bug');
  };
  return {
    version: 'test',
    sandboxes: { get: () => { throw new NotFoundError('sandbox x not found'); }, list: boom, ...overrides },
    commands: {},
    files: {},
    templates: { list: () => [], get: boom, build: boom },
  } as unknown as Services;
}

describe('HTTP error mapping', () => {
  it('maps a CapsuleError to its status and code', async () => {
    const app = buildServer(services());
    const r = await app.inject({ method: 'GET', url: '/v1/sandboxes/sbx-000000000000' });
    assert.equal(r.statusCode, 404);
    assert.deepEqual(r.json(), { error: { code: 'not_found', message: 'sandbox x not found' } });
  });
  it('turns schema failures into invalid_argument with the field', async () => {
    const app = buildServer(services());
    const r = await app.inject({ method: 'POST', url: '/v1/sandboxes', payload: { template: 7 } });
    assert.equal(r.statusCode, 400);
    assert.equal(r.json().error.code, 'invalid_argument');
    assert.match(r.json().error.message, /template/);
  });
  it('answers malformed JSON with 400, unknown routes with 404', async () => {
    const app = buildServer(services());
    const bad = await app.inject({ method: 'POST', url: '/v1/sandboxes', payload: '{', headers: { 'content-type': 'application/json' } });
    assert.equal(bad.statusCode, 400);
    assert.equal(bad.json().error.code, 'invalid_argument');
    const nf = await app.inject({ method: 'GET', url: '/nope' });
    assert.equal(nf.statusCode, 404);
    assert.equal(nf.json().error.code, 'not_found');
  });
  it('hides unexpected errors behind a 500 internal (and logs them)', async () => {
    const app = buildServer(services());
    const r = await app.inject({ method: 'GET', url: '/v1/sandboxes' });
    assert.equal(r.statusCode, 500);
    assert.equal(r.json().error.code, 'internal');
    assert.doesNotMatch(r.body, /bug/);
  });
});
