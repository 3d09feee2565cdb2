/** The DNS-rebinding guard of /mcp and the tool catalogue, without sockets. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { z } from 'zod';
import { checkHostAndOrigin } from '../../../src/mcp/http.js';
import { TOOLS, encodeContent } from '../../../src/mcp/tools.js';

const LOOP = { address: '127.0.0.1', port: 7878 };

describe('checkHostAndOrigin', () => {
  it('accepts loopback names with our port, with or without a loopback Origin', () => {
    for (const host of ['localhost:7878', '127.0.0.1:7878', '[::1]:7878', 'LOCALHOST:7878']) {
      assert.equal(checkHostAndOrigin({ host }, LOOP), undefined, host);
      assert.equal(checkHostAndOrigin({ host, origin: 'http://localhost:6274' }, LOOP), undefined, host);
    }
    assert.equal(checkHostAndOrigin({ host: '[::1]:7878' }, { address: '::1', port: 7878 }), undefined);
  });

  it('refuses foreign names, other ports and a missing Host on loopback', () => {
    for (const host of ['evil.example', 'evil.example:7878', 'localhost:8080', '127.0.0.2:7878', undefined]) {
      assert.match(checkHostAndOrigin({ host }, LOOP) ?? '', /Host header/, String(host));
    }
  });

  it('refuses foreign, opaque and malformed Origins', () => {
    for (const origin of ['http://evil.example', 'https://localhost.evil.example', 'null', 'file://', 'not a url']) {
      assert.match(checkHostAndOrigin({ host: 'localhost:7878', origin }, LOOP) ?? '', /Origin/, origin);
    }
  });

  it('off the loopback: any Host, but an Origin must match it', () => {
    const pub = { address: '10.0.0.5', port: 7878 };
    assert.equal(checkHostAndOrigin({ host: 'capsule.internal:7878' }, pub), undefined);
    assert.equal(checkHostAndOrigin({ host: 'capsule.internal:7878', origin: 'http://capsule.internal:7878' }, pub), undefined);
    assert.match(checkHostAndOrigin({ host: 'capsule.internal:7878', origin: 'http://evil.example' }, pub) ?? '', /Origin/);
  });
});

describe('tools', () => {
  it('every tool has described inputs, an object output and all four hints', () => {
    const names = new Set<string>();
    for (const t of TOOLS) {
      assert.ok(!names.has(t.name), `duplicate ${t.name}`);
      names.add(t.name);
      assert.match(t.name, /^[a-z_]+$/);
      const schema = z.toJSONSchema(t.input) as { properties?: Record<string, { description?: string }> };
      for (const [k, v] of Object.entries(schema.properties ?? {})) assert.ok(v.description, `${t.name}.${k} has a description`);
      assert.equal((z.toJSONSchema(t.output) as { type?: string }).type, 'object');
      for (const h of ['readOnlyHint', 'destructiveHint', 'idempotentHint', 'openWorldHint'] as const) {
        assert.equal(typeof t.annotations[h], 'boolean', `${t.name}.${h}`);
      }
      assert.equal(t.annotations.openWorldHint, false);
    }
  });

  it('encodes text as utf8 and other bytes as base64', () => {
    assert.deepEqual(encodeContent(Buffer.from('héllo\n')), { encoding: 'utf8', content: 'héllo\n' });
    assert.deepEqual(encodeContent(Buffer.from([0xff, 0x00, 0xfe])), { encoding: 'base64', content: '/wD+' });
  });
});
