/**
 * mounts.ts turns the mount helper's exit codes and stderr into RuntimeErrors
 * with a hint. A stand-in helper (a shell script) plays each failure; the
 * real helper is exercised by the runtime integration tests.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isCapsuleError } from '../../../src/errors/index.js';
import { setupSandboxMounts, teardownSandboxMounts } from '../../../src/runtime/mounts.js';
import { sandboxLayout } from '../../../src/runtime/overlay.js';

describe('mount helper errors', () => {
  let dir: string;
  const helper = (name: string, body: string) => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    return p;
  };
  const setup = (h: string) =>
    setupSandboxMounts(
      { layout: sandboxLayout('/nonexistent/sbx'), layers: ['/t'], diskMb: 64, owner: 100000, agentBinary: '/a', directIo: false, imageCache: '/c' },
      { helper: h },
    );

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-mounts-unit-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('passes the layout, size, owner, agent and cache to setup', async () => {
    const argsFile = path.join(dir, 'args');
    await setup(helper('record', `echo "$@" > ${argsFile}`));
    assert.equal(fs.readFileSync(argsFile, 'utf8').trim(), 'setup /nonexistent/sbx /t 64 100000 /a --image-cache /c');
  });

  test('a loop device failure says what failed and points at capsule doctor', async () => {
    const h = helper('loopfail', 'echo "capsule-mount: no free loop device (LOOP_CTL_GET_FREE; raise max_loop): No such device" >&2; exit 6');
    await assert.rejects(setup(h), (e: unknown) => {
      assert.ok(isCapsuleError(e) && e.code === 'runtime_error');
      assert.match(e.message, /no free loop device/);
      assert.doesNotMatch(e.message, /capsule-mount: /, 'the helper prefix is dropped');
      assert.match(e.message, /capsule doctor/);
      assert.equal(e.details?.exitCode, 6);
      return true;
    });
  });

  test('a killed helper and a missing helper are errors with a reason', async () => {
    await assert.rejects(setup(helper('killed', 'kill -9 $$')), /killed by SIGKILL/);
    await assert.rejects(setup(path.join(dir, 'missing')), /npm run build/);
  });

  test('teardown failures carry the fuser hint', async () => {
    const h = helper('busy', 'echo "capsule-mount: unmount /x/disk: Device or resource busy" >&2; exit 10');
    await assert.rejects(teardownSandboxMounts('/x', { helper: h }), /Device or resource busy.*fuser/);
    await teardownSandboxMounts('/x', { helper: helper('ok', 'exit 0') });
  });
});
