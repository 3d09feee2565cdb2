/** The sandbox DNS: answers from the policy, stand-in addresses, nothing resolved for refused names, every query in the ledger. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import dnsPacket from 'dns-packet';
import { openDb } from '../../../src/store/db.js';
import { answerDns } from '../../../src/network/dns.js';
import { EgressLedger } from '../../../src/network/ledger.js';
import { StandIns, inStandInRange } from '../../../src/network/names.js';
import { compilePolicy, type Egress } from '../../../src/network/policy.js';
import type { NetworkEnvironment } from '../../../src/network/environment.js';

function setup(egress: Egress) {
  const asked: string[] = [];
  const env: NetworkEnvironment = {
    simulated: true,
    resolve: async (name) => {
      asked.push(name);
      return name === 'missing.test' ? [] : ['203.0.113.10'];
    },
    dial: async () => {
      throw new Error('not here');
    },
    target: (ip) => ip,
  };
  const ledger = new EgressLedger(openDb(':memory:'));
  const names = new StandIns();
  const ctx = { sandboxId: 'sbx-aaaaaaaaaaaa', policy: () => compilePolicy(egress), names, env, ledger };
  const ask = async (name: string, type: 'A' | 'AAAA' | 'TXT' = 'A'): Promise<dnsPacket.DecodedPacket & { rcode: string }> => {
    const q = dnsPacket.encode({ type: 'query', id: 7, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name }] });
    return dnsPacket.decode((await answerDns(q, ctx))!) as dnsPacket.DecodedPacket & { rcode: string };
  };
  return { asked, ledger, names, ask };
}

describe('sandbox DNS', () => {
  it('answers an allowed name with a stable stand-in and logs it', async () => {
    const { ask, ledger, names } = setup({ allow: ['allowed.test'] });
    const a = await ask('Allowed.Test');
    assert.equal(a.rcode, 'NOERROR');
    assert.equal(a.id, 7);
    const ip = (a.answers![0] as { data: string }).data;
    assert.ok(inStandInRange(ip), ip);
    assert.equal(names.nameOf(ip), 'allowed.test');
    assert.equal(((await ask('allowed.test')).answers![0] as { data: string }).data, ip, 'stable');
    const v6 = await ask('allowed.test', 'AAAA');
    assert.equal(v6.rcode, 'NOERROR');
    assert.deepEqual(v6.answers, []);
    const log = ledger.list('sbx-aaaaaaaaaaaa', 0, 10).entries;
    assert.equal(log.length, 3);
    assert.ok(log.every((e) => e.protocol === 'dns' && e.verdict === 'allowed' && e.address === '203.0.113.10'));
  });

  it('refuses other names without resolving them', async () => {
    const { ask, asked, ledger } = setup({ allow: ['allowed.test'] });
    assert.equal((await ask('secret-data.attacker.test')).rcode, 'NXDOMAIN');
    assert.equal((await ask('anything.test', 'TXT')).rcode, 'NXDOMAIN');
    assert.deepEqual(asked, [], 'no real lookup for a refused name');
    assert.ok(ledger.list('sbx-aaaaaaaaaaaa', 0, 10).entries.every((e) => e.verdict === 'refused'));
    const none = setup('none');
    assert.equal((await none.ask('allowed.test')).rcode, 'NXDOMAIN');
  });

  it('a name that does not exist is NXDOMAIN; garbage gets FORMERR or nothing', async () => {
    const { ask } = setup('all');
    assert.equal((await ask('missing.test')).rcode, 'NXDOMAIN');
    const ctx = { sandboxId: 's', policy: () => compilePolicy('all'), names: new StandIns(), env: {} as NetworkEnvironment, ledger: new EgressLedger(openDb(':memory:')) };
    assert.equal(await answerDns(Buffer.from('short'), ctx), null);
    const bad = await answerDns(Buffer.concat([Buffer.from([0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]), Buffer.from([200, 1, 2])]), ctx);
    assert.equal(bad!.readUInt16BE(0), 9);
    assert.equal(bad![3]! & 15, 1, 'FORMERR');
  });
});
