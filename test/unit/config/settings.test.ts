/** Daemon settings: every value from the environment or a flag is checked, and a bad one names itself. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { DEFAULT_POOLS, SETTINGS, SettingError, loadConfig, parseSettings } from '../../../src/config/index.js';

function refused(env: NodeJS.ProcessEnv, flags: Record<string, string> = {}): SettingError {
  try {
    parseSettings({ env, flags });
  } catch (e) {
    assert.ok(e instanceof SettingError, `expected a SettingError, got ${String(e)}`);
    return e;
  }
  assert.fail(`accepted ${JSON.stringify({ env, flags })}`);
}

describe('settings', () => {
  it('defaults without any setting', () => {
    const c = loadConfig({}, { env: {} });
    assert.equal(c.host, '127.0.0.1');
    assert.equal(c.port, 7878);
    assert.equal(c.runtime, 'crun');
    assert.equal(c.isolation, 'container');
    assert.equal(c.logLevel, 'info');
    assert.equal(c.defaultTimeoutMs, 300_000);
    assert.equal(c.maxTimeoutMs, 86_400_000);
    assert.equal(c.defaultResources.diskMb, 2048);
    assert.equal(c.maxDiskMb, 65536);
    assert.equal(c.auth, true);
    assert.deepEqual(c.pools, DEFAULT_POOLS);
    assert.equal(c.buildPoolTemplates, false);
    assert.ok(path.isAbsolute(c.dataDir));
  });

  it('reads every variable, and flags win over them', () => {
    const env = {
      CAPSULE_HOST: '::1',
      CAPSULE_PORT: '0',
      CAPSULE_DATA_DIR: 'rel/dir',
      CAPSULE_RUNTIME: '/usr/local/bin/runsc',
      CAPSULE_LOG_LEVEL: 'DEBUG',
      CAPSULE_ISOLATION: 'gVisor',
      CAPSULE_DEFAULT_TIMEOUT_MS: '60000',
      CAPSULE_MAX_TIMEOUT_MS: '120000',
      CAPSULE_DEFAULT_DISK_MB: '512',
      CAPSULE_MAX_DISK_MB: '1024',
      CAPSULE_NO_AUTH: '1',
      CAPSULE_POOL: 'busybox=3',
    };
    const c = loadConfig({}, { env });
    assert.equal(c.host, '::1');
    assert.equal(c.port, 0);
    assert.equal(c.dataDir, path.resolve('rel/dir'), 'a relative data dir is made absolute');
    assert.equal(c.runtime, '/usr/local/bin/runsc');
    assert.equal(c.logLevel, 'debug');
    assert.equal(c.isolation, 'gvisor');
    assert.equal(c.defaultTimeoutMs, 60_000);
    assert.equal(c.maxTimeoutMs, 120_000);
    assert.equal(c.defaultResources.diskMb, 512);
    assert.equal(c.maxDiskMb, 1024);
    assert.equal(c.auth, false);
    assert.deepEqual(c.pools, { busybox: 3 });
    assert.equal(c.buildPoolTemplates, true);
    const f = loadConfig({}, { env, flags: { port: '9000', runtime: 'runc', logLevel: 'warn' } });
    assert.equal(f.port, 9000);
    assert.equal(f.runtime, 'runc');
    assert.equal(f.logLevel, 'warn');
  });

  it('an empty variable is an unset one, except CAPSULE_POOL where empty turns pools off', () => {
    const c = loadConfig({}, { env: { CAPSULE_PORT: '', CAPSULE_LOG_LEVEL: '', CAPSULE_NO_AUTH: '', CAPSULE_POOL: '' } });
    assert.equal(c.port, 7878);
    assert.equal(c.logLevel, 'info');
    assert.equal(c.auth, true);
    assert.deepEqual(c.pools, {});
  });

  const bad: Array<[string, string, RegExp]> = [
    ['CAPSULE_PORT', 'abc', /whole number from 0 to 65535/],
    ['CAPSULE_PORT', '65536', /0 to 65535/],
    ['CAPSULE_PORT', '-1', /0 to 65535/],
    ['CAPSULE_PORT', '80.5', /whole number/],
    ['CAPSULE_PORT', '0x50', /whole number/],
    ['CAPSULE_PORT', '1e3', /whole number/],
    ['CAPSULE_HOST', 'bad host', /IP address or a host name/],
    ['CAPSULE_RUNTIME', 'crunx', /crun, runc, runsc.*absolute path/],
    ['CAPSULE_RUNTIME', 'bin/crun', /absolute path/],
    ['CAPSULE_ISOLATION', 'vm', /container, gvisor, microvm/],
    ['CAPSULE_LOG_LEVEL', 'verbose', /fatal, error, warn, info, debug, trace, silent/],
    ['CAPSULE_DEFAULT_TIMEOUT_MS', '0', /milliseconds from 1000/],
    ['CAPSULE_DEFAULT_TIMEOUT_MS', '5m', /whole number of milliseconds/],
    ['CAPSULE_MAX_TIMEOUT_MS', '99999999999999999999', /milliseconds/],
    ['CAPSULE_DEFAULT_DISK_MB', '0', /MiB from 16/],
    ['CAPSULE_MAX_DISK_MB', 'lots', /whole number of MiB/],
    ['CAPSULE_NO_AUTH', 'yes', /1 \(or true\)/],
    ['CAPSULE_POOL', 'busybox', /<template>\[:<isolation>\]=<size>/],
    ['CAPSULE_TEMPLATE_CACHE', 'cache', /absolute directory path/],
  ];
  for (const [name, value, why] of bad) {
    it(`refuses ${name}=${value}, naming the setting, the value and what it takes`, () => {
      const e = refused({ [name]: value });
      assert.equal(e.setting, name);
      assert.equal(e.source, 'env');
      assert.equal(e.code, 'invalid_argument');
      assert.ok(e.message.startsWith(`${name}=${JSON.stringify(value)} is not valid: `), e.message);
      assert.match(e.message, why);
    });
  }

  it('says what the default is, so unsetting is a fix', () => {
    assert.match(refused({ CAPSULE_PORT: 'abc' }).message, /unset CAPSULE_PORT for the default \(7878\)/);
  });

  it('names the flag when the bad value came from one', () => {
    const e = refused({ CAPSULE_PORT: '7000' }, { port: 'x' });
    assert.equal(e.source, 'flag');
    assert.equal(e.setting, '--port');
    assert.match(e.message, /^--port "x" is not valid: must be a whole number from 0 to 65535/);
  });

  it('refuses defaults above their maximum', () => {
    assert.match(refused({ CAPSULE_DEFAULT_TIMEOUT_MS: '7200000', CAPSULE_MAX_TIMEOUT_MS: '3600000' }).message, /CAPSULE_DEFAULT_TIMEOUT_MS.*must not exceed CAPSULE_MAX_TIMEOUT_MS \(3600000\)/);
    assert.match(refused({ CAPSULE_DEFAULT_DISK_MB: '4096', CAPSULE_MAX_DISK_MB: '2048' }).message, /must not exceed CAPSULE_MAX_DISK_MB/);
  });

  it('every setting has a variable and a description', () => {
    for (const [name, s] of Object.entries(SETTINGS)) {
      assert.match(s.env, /^CAPSULE_[A-Z_]+$/, name);
      assert.ok(s.describe.length > 10, name);
    }
  });
});
