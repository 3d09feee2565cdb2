/** The gateway's flood bound: at most ATTEMPTS_PER_SECOND connections and DNS queries per sandbox, with bursts. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ATTEMPTS_PER_SECOND, takeAttempt } from '../../../src/network/limits.js';
import type { SandboxNet } from '../../../src/network/gateway.js';
import { compilePolicy } from '../../../src/network/policy.js';
import { StandIns } from '../../../src/network/names.js';

const sbx = (): SandboxNet => ({ id: 's', policy: compilePolicy('all'), names: new StandIns(), flows: new Set() });

describe('gateway flood bound', () => {
  it('allows a burst of ATTEMPTS_PER_SECOND, then refills at that rate, per sandbox', () => {
    const a = sbx();
    const b = sbx();
    let ok = 0;
    for (let i = 0; i < ATTEMPTS_PER_SECOND * 3; i++) if (takeAttempt(a, 1000)) ok++;
    assert.equal(ok, ATTEMPTS_PER_SECOND);
    assert.equal(takeAttempt(b, 1000), true, 'another sandbox has its own bucket');
    assert.equal(takeAttempt(a, 1000), false);
    assert.equal(takeAttempt(a, 1010), true, 'refilled after 10 ms (2 attempts at 200/s)');
    let later = 0;
    for (let i = 0; i < ATTEMPTS_PER_SECOND * 3; i++) if (takeAttempt(a, 3000)) later++;
    assert.equal(later, ATTEMPTS_PER_SECOND, 'never more than one burst');
  });
});
