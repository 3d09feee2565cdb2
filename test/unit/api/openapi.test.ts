/**
 * The OpenAPI document served at /v1/openapi.json: a standard linter (Redocly CLI,
 * its `recommended` rules) finds nothing but the listed exceptions, every operation
 * declares the error statuses it can answer with the error body, and the statuses
 * the HTTP edge really answers are among them.
 */
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../../src/api/server.js';
import type { Services } from '../../../src/api/services.js';
import { RateLimiter } from '../../../src/auth/rate-limit.js';
import { REPO_ROOT } from '../../helpers/serve.js';

/**
 * Findings that are right to leave, each with why. An entry the linter no longer
 * reports fails the test, so the list cannot go stale.
 */
const EXCEPTIONS: ReadonlyArray<{ rule: string; pointer: string; why: string }> = [
  { rule: 'info-license', pointer: '#/info', why: 'the project declares no license yet; add info.license when package.json gets one' },
  {
    rule: 'operation-4xx-response',
    pointer: '#/paths/~1v1~1health/get/responses',
    why: 'liveness takes no input and no key (PUBLIC_PATHS): it has no client error to declare',
  },
  {
    rule: 'operation-4xx-response',
    pointer: '#/paths/~1v1~1openapi.json/get/responses',
    why: 'the document takes no input and no key (PUBLIC_PATHS): it has no client error to declare',
  },
];

interface Problem {
  ruleId: string;
  severity: string;
  message: string;
  location: Array<{ pointer: string }>;
}

/**
 * Stand-in services: the document and the auth hook need none of the real ones. With
 * `auth`, every key is unknown (so every authenticated route answers 401 before its
 * handler); without, requests reach validation and then handlers whose services are
 * missing (a bug: 500).
 */
function services(auth: boolean): Services {
  return {
    version: '0.0.0-test',
    sandboxes: {},
    commands: {},
    files: {},
    templates: {},
    keys: auth ? { verify: () => null } : null,
    limiter: new RateLimiter(),
  } as unknown as Services;
}

type Operation = { operationId: string; security?: unknown[]; responses: Record<string, { content?: Record<string, { schema: unknown }> }> };

describe('OpenAPI document', () => {
  let app: FastifyInstance;
  let doc: { paths: Record<string, Record<string, Operation>>; components: { schemas: Record<string, unknown> } };
  const ops = () => Object.entries(doc.paths).flatMap(([p, byMethod]) => Object.entries(byMethod).map(([m, op]) => ({ path: p, method: m, op })));

  before(async () => {
    app = buildServer(services(true));
    const r = await app.inject({ method: 'GET', url: '/v1/openapi.json' });
    assert.equal(r.statusCode, 200);
    doc = r.json();
  });

  it('passes Redocly lint (recommended rules) with no warning or error beyond the listed exceptions', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-openapi-'));
    try {
      const file = path.join(dir, 'openapi.json');
      fs.writeFileSync(file, JSON.stringify(doc, null, 2));
      // telemetry off: the linter would otherwise report usage to redocly.com.
      fs.writeFileSync(path.join(dir, 'redocly.yaml'), 'extends:\n  - recommended\ntelemetry: off\n');
      const cli = path.join(REPO_ROOT, 'node_modules', '@redocly', 'cli', 'bin', 'cli.js');
      assert.ok(fs.existsSync(cli), `${cli} is missing: run npm install (it is a devDependency)`);
      const r = spawnSync(process.execPath, [cli, 'lint', file, '--config', path.join(dir, 'redocly.yaml'), '--format=json'], {
        cwd: dir,
        encoding: 'utf8',
        timeout: 120_000,
        env: { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true', REDOCLY_SUPPRESS_NOTIFICATIONS: 'true' },
      });
      let report: { totals: { errors: number; warnings: number }; problems: Problem[] };
      try {
        report = JSON.parse(r.stdout);
      } catch {
        assert.fail(`redocly lint printed no JSON report (exit ${r.status}):\n${r.stdout}\n${r.stderr}`);
      }
      const excepted = (p: Problem) => EXCEPTIONS.some((e) => e.rule === p.ruleId && p.location.some((l) => l.pointer === e.pointer));
      const left = report.problems.filter((p) => !excepted(p));
      assert.deepEqual(
        left.map((p) => `${p.severity} ${p.ruleId} at ${p.location.map((l) => l.pointer).join(', ')}: ${p.message}`),
        [],
        'the OpenAPI document has lint findings',
      );
      const stale = EXCEPTIONS.filter((e) => !report.problems.some((p) => p.ruleId === e.rule && p.location.some((l) => l.pointer === e.pointer)));
      assert.deepEqual(stale, [], 'these exceptions are no longer reported: remove them from EXCEPTIONS');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('declares the error body for the statuses each operation can answer', () => {
    assert.ok(doc.components.schemas.ErrorBody, 'components.schemas.ErrorBody');
    for (const { path: p, method, op } of ops()) {
      const where = `${method.toUpperCase()} ${p}`;
      const statuses = Object.keys(op.responses);
      const isPublic = Array.isArray(op.security) && op.security.length === 0;
      assert.ok(statuses.includes('500'), `${where} declares 500`);
      assert.ok(statuses.includes('default'), `${where} declares default`);
      if (!isPublic) for (const s of ['401', '429']) assert.ok(statuses.includes(s), `${where} declares ${s} (it needs a key)`);
      if (p.includes('{')) assert.ok(statuses.includes('404'), `${where} declares 404 (its path names something)`);
      for (const s of statuses.filter((x) => /^[45]|default/.test(x))) {
        assert.deepEqual(op.responses[s]!.content?.['application/json']?.schema, { $ref: '#/components/schemas/ErrorBody' }, `${where} ${s} has the error body`);
      }
    }
    const get = (p: string, m: string) => Object.keys(doc.paths[p]![m]!.responses);
    for (const s of ['400', '413']) assert.ok(get('/v1/sandboxes', 'post').includes(s), `create declares ${s}`);
    assert.ok(get('/v1/sandboxes/{id}/commands', 'post').includes('409'), 'a command on an ended sandbox is a conflict');
    assert.ok(get('/v1/keys', 'post').includes('403'), 'keys need an admin key');
    assert.ok(get('/v1/sandboxes/{id}/commands/{pid}/wait', 'get').includes('504'), 'wait can time out');
    assert.deepEqual(doc.paths['/v1/health']!.get!.security, [], 'health needs no key');
  });

  it('gives every operation its own operationId', () => {
    const ids = ops().map((o) => o.op.operationId);
    assert.ok(ids.every((id) => typeof id === 'string' && /^[a-z][A-Za-z0-9]+$/.test(id)), ids.join(', '));
    assert.equal(new Set(ids).size, ids.length);
    assert.equal(doc.paths['/v1/sandboxes/{id}']!.get!.operationId, 'getSandboxesById');
  });

  it('declares the statuses the server really answers without a key, and to bad path ids and bodies', async () => {
    const open = buildServer(services(false));
    for (const { path: p, method, op } of ops()) {
      const where = `${method.toUpperCase()} ${p}`;
      const declared = Object.keys(op.responses);
      const isPublic = Array.isArray(op.security) && op.security.length === 0;
      const url = p.replace(/\{[^}]+\}/g, 'x');
      if (!isPublic) {
        const r = await app.inject({ method: method.toUpperCase() as 'GET', url });
        assert.ok(declared.includes(String(r.statusCode)), `${where} answered ${r.statusCode} without a key, not declared`);
      }
      const r = await open.inject({ method: method.toUpperCase() as 'GET', url, payload: '{"no":', headers: { 'content-type': 'application/json' } });
      assert.ok(declared.includes(String(r.statusCode)), `${where} answered ${r.statusCode} to a bad request, not declared: ${r.body}`);
    }
  });
});
