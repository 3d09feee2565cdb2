/** Egress policy: rule grammar, the order of decisions, special ranges, the daemon's port, DNS names. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { compilePolicy, evaluate, nameAllowed, parseRule, type Egress, type HostFacts } from '../../../src/network/policy.js';
import { EgressPolicy } from '../../../src/schemas/network.js';

const host: HostFacts = { ownAddresses: new Set(['192.0.2.2', '127.0.0.1']), daemonPort: 7878, daemonHost: '127.0.0.1' };
const allowed = (e: Egress, d: Parameters<typeof evaluate>[1]) => evaluate(compilePolicy(e), d, host);

describe('network policy', () => {
  it('parses every rule form and refuses bad ones with the rule in the message', () => {
    assert.equal(parseRule('example.com').kind, 'domain');
    assert.equal(parseRule('*.Example.COM').kind, 'suffix');
    assert.equal(parseRule('10.0.0.0/8').kind, 'cidr');
    assert.equal(parseRule('1.2.3.4:443').kind, 'cidr');
    assert.equal(parseRule('[2001:db8::/32]:443').kind, 'cidr');
    assert.equal(parseRule('2001:db8::1').kind, 'cidr');
    assert.equal(parseRule('*:80,443').kind, 'any');
    assert.deepEqual(parseRule('example.com:8000-8100').ports, [{ from: 8000, to: 8100 }]);
    for (const bad of ['', 'exa mple.com', '*.com', 'example.com:0', 'example.com:70000', 'example.com:9-1', '10.0.0.0/33', '-x.com', 'a..b']) {
      assert.throws(() => parseRule(bad), /egress rule/, bad);
    }
    assert.equal(EgressPolicy.safeParse({ allow: ['ok.com', 'bad rule'] }).success, false);
    assert.equal(EgressPolicy.safeParse({ allow: ['ok.com'], extra: 1 }).success, false);
    assert.equal(EgressPolicy.safeParse('some').success, false);
  });

  it('none refuses everything; all allows public addresses only', () => {
    assert.equal(allowed('none', { ip: '93.184.216.34', port: 443 }).rule, 'none');
    assert.equal(allowed('all', { ip: '93.184.216.34', port: 443 }).allowed, true);
    for (const ip of ['10.1.2.3', '172.16.0.1', '192.168.1.1', '127.0.0.5', '169.254.169.254', '100.64.0.1', '0.0.0.0', '224.0.0.1', 'fc00::1', 'fd00:ec2::254', 'fe80::1', '::1', '::ffff:10.0.0.1', '::ffff:127.0.0.1']) {
      const v = allowed('all', { ip, port: 80 });
      assert.equal(v.allowed, false, ip);
      assert.equal(v.rule, 'special', ip);
    }
    assert.equal(allowed('all', { ip: '192.0.2.2', port: 22 }).rule, 'own-host', "this host's own public address is not the internet");
  });

  it('special ranges open only when a rule names them explicitly', () => {
    assert.equal(allowed({ allow: ['*', '10.0.0.0/8'] }, { ip: '10.9.9.9', port: 5432 }).allowed, true);
    assert.equal(allowed({ allow: ['10.1.0.0/16'] }, { ip: '10.1.2.3', port: 5432 }).allowed, true);
    assert.equal(allowed({ allow: ['0.0.0.0/0'] }, { ip: '10.1.2.3', port: 5432 }).allowed, false, '0/0 does not name 10/8');
    assert.equal(allowed({ allow: ['*.corp.example'] }, { ip: '10.1.2.3', port: 443, name: 'db.corp.example' }).allowed, false, 'a wildcard does not name a private address (DNS rebinding)');
    assert.equal(allowed({ allow: ['db.corp.example'] }, { ip: '10.1.2.3', port: 443, name: 'db.corp.example' }).allowed, true, 'an exact name does');
    assert.equal(allowed({ allow: ['192.0.2.2/32'] }, { ip: '192.0.2.2', port: 22 }).allowed, true);
  });

  it("the daemon's own port is never reachable, even when named", () => {
    for (const e of ['all', { allow: ['*', '127.0.0.0/8', '192.0.2.2/32'] }] as Egress[]) {
      assert.equal(allowed(e, { ip: '127.0.0.1', port: 7878 }).rule, 'daemon');
      assert.equal(allowed(e, { ip: '192.0.2.2', port: 7878 }).allowed, false);
      assert.equal(allowed(e, { ip: '203.0.113.1', port: 7878, dialed: '127.0.0.1' }).rule, 'daemon', 'judged on where the dial lands');
    }
    assert.equal(allowed({ allow: ['*', '127.0.0.0/8'] }, { ip: '127.0.0.1', port: 7879 }).allowed, true);
    const everywhere = { ...host, daemonHost: '0.0.0.0' };
    assert.equal(evaluate(compilePolicy({ allow: ['192.0.2.2/32'] }), { ip: '192.0.2.2', port: 7878 }, everywhere).rule, 'daemon');
  });

  it('domain rules match only names resolved through the daemon; SNI/Host must agree with them', () => {
    const p: Egress = { allow: ['allowed.test', '*.pkg.test:443'] };
    assert.equal(allowed(p, { ip: '203.0.113.10', port: 80, name: 'allowed.test' }).allowed, true);
    assert.equal(allowed(p, { ip: '203.0.113.10', port: 80, name: 'allowed.test', claimed: 'ALLOWED.test' }).allowed, true);
    assert.equal(allowed(p, { ip: '203.0.113.10', port: 80, name: 'allowed.test', claimed: 'other.test' }).rule, 'sni-mismatch');
    assert.equal(allowed(p, { ip: '203.0.113.10', port: 80, claimed: 'allowed.test' }).rule, 'raw-address', 'a raw IP claiming an allowed name');
    assert.equal(allowed(p, { ip: '203.0.113.10', port: 80 }).rule, 'default-deny');
    assert.equal(allowed(p, { ip: '203.0.113.11', port: 443, name: 'a.b.pkg.test' }).allowed, true);
    assert.equal(allowed(p, { ip: '203.0.113.11', port: 80, name: 'a.pkg.test' }).allowed, false, 'port not named');
    assert.equal(allowed(p, { ip: '203.0.113.11', port: 443, name: 'pkg.test' }).allowed, false, '*.x is not x itself');
  });

  it('deny wins over allow, by address, resolved name or claimed name', () => {
    const p: Egress = { allow: ['*'], deny: ['*.evil.test', '198.51.100.0/24', '*:25'] };
    assert.equal(allowed(p, { ip: '203.0.113.5', port: 443, name: 'x.evil.test' }).rule, '*.evil.test');
    assert.equal(allowed(p, { ip: '203.0.113.5', port: 443, claimed: 'x.evil.test' }).rule, '*.evil.test', 'SNI of a raw-IP connection');
    assert.equal(allowed(p, { ip: '198.51.100.7', port: 443 }).rule, '198.51.100.0/24');
    assert.equal(allowed(p, { ip: '203.0.113.5', port: 25 }).rule, '*:25');
    assert.equal(allowed(p, { ip: '203.0.113.5', port: 443 }).allowed, true);
  });

  it('DNS answers only names some rule could allow', () => {
    assert.equal(nameAllowed(compilePolicy('none'), 'a.test').allowed, false);
    assert.equal(nameAllowed(compilePolicy('all'), 'anything.test').allowed, true);
    const p = compilePolicy({ allow: ['allowed.test', '*.pkg.test', '10.0.0.0/8'], deny: ['bad.pkg.test'] });
    assert.equal(nameAllowed(p, 'Allowed.Test.').allowed, true);
    assert.equal(nameAllowed(p, 'x.pkg.test').allowed, true);
    assert.equal(nameAllowed(p, 'bad.pkg.test').allowed, false);
    assert.equal(nameAllowed(p, 'secret-data.attacker.test').allowed, false, 'never resolved upstream');
    assert.equal(nameAllowed(p, 'not a name').rule, 'invalid');
  });
});
