/**
 * One error class per API code, reachable from the SDK entry. The expected class
 * name is derived from the code itself (rate_limited → RateLimitedError), so a code
 * added to ERROR_CODES without its class, its errorFromWire mapping or its SDK
 * export fails here.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as sdk from '../../../src/sdk/index.js';
import { HTTP_STATUS, errorFromWire } from '../../../src/errors/index.js';

function className(code: string): string {
  const pascal = code.replace(/_error$/, '').split('_').map((w) => w[0]!.toUpperCase() + w.slice(1)).join('');
  return `${pascal}Error`;
}

describe('error classes', () => {
  for (const code of sdk.ERROR_CODES) {
    it(`${code} has its own class, exported by the SDK and built by errorFromWire`, () => {
      const name = className(code);
      const Cls = (sdk as unknown as Record<string, unknown>)[name];
      assert.equal(typeof Cls, 'function', `the SDK entry (src/sdk/index.ts) exports no ${name} for code ${code}`);
      const ctor = Cls as new (message: string, details?: Record<string, unknown>) => sdk.CapsuleError;
      assert.ok(ctor.prototype instanceof sdk.CapsuleError, `${name} must extend CapsuleError`);

      const direct = new ctor('m', { k: 1 });
      assert.equal(direct.code, code);
      assert.equal(direct.name, name);

      const wire = errorFromWire(code, 'from the daemon', { sandboxId: 'sbx-000000000000' });
      assert.ok(wire instanceof ctor, `errorFromWire('${code}') built ${wire.constructor.name}, not ${name}`);
      assert.equal(wire.code, code);
      assert.equal(wire.message, 'from the daemon');
      assert.deepEqual(wire.details, { sandboxId: 'sbx-000000000000' });
      assert.deepEqual(wire.toJSON(), { error: { code, message: 'from the daemon', details: { sandboxId: 'sbx-000000000000' } } });
      assert.equal(typeof HTTP_STATUS[code], 'number');
      assert.equal(sdk.ERROR_CLASSES[code], ctor);
    });
  }

  it('no two codes share a class', () => {
    const classes = sdk.ERROR_CODES.map((c) => errorFromWire(c, 'x').constructor);
    assert.equal(new Set(classes).size, sdk.ERROR_CODES.length);
  });

  it('a code this SDK does not know becomes an InternalError that keeps the code', () => {
    const e = errorFromWire('brand_new_code', 'from a newer daemon', { a: 1 });
    assert.ok(e instanceof sdk.InternalError);
    assert.equal(e.code, 'internal');
    assert.deepEqual(e.details, { a: 1, unknownCode: 'brand_new_code' });
  });
});
