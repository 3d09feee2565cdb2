/**
 * What the gVisor driver does beyond the shared contract (contract-gvisor.test.ts): /tmp stays on the
 * sandbox's disk, the pids limit holds inside gVisor while the sandbox survives, verbs it lacks answer
 * `unsupported`, and its leftovers list names only its own sandboxes.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connectAgent } from '../../../src/agent/client.js';
import type { AgentConnection } from '../../../src/agent/types.js';
import { AGENT_BUILD_PATH } from '../../../src/daemon.js';
import { UnsupportedError } from '../../../src/errors/index.js';
import { GvisorDriver, TMP_KEEP_FILE } from '../../../src/runtime/gvisor/driver.js';
import { ID_BASE, ID_SIZE, makeFixture, skipReason, specFor, type Fixture } from './fixture.js';

function skip(): string | false {
  const base = skipReason();
  if (base) return base;
  try {
    execFileSync('runsc', ['--version'], { stdio: 'ignore' });
    return false;
  } catch {
    return 'needs runsc (apt-get install runsc)';
  }
}

async function run(conn: AgentConnection, cmd: string): Promise<{ code: number; out: string }> {
  const p = await conn.exec({ argv: ['sh', '-c', cmd], env: { PATH: '/bin:/usr/bin' }, stdin: false });
  let out = '';
  p.on('stdout', (c) => (out += c.toString()));
  p.on('stderr', (c) => (out += c.toString()));
  return { code: (await p.exited).exitCode, out };
}

describe('gVisor driver', { skip: skip() }, () => {
  let fx: Fixture;
  let driver: GvisorDriver;
  let conn: AgentConnection;
  const id = `gvisor-${process.pid}`;

  before(async () => {
    fx = makeFixture();
    driver = new GvisorDriver({ paths: fx.paths, idMapBase: ID_BASE, idMapSize: ID_SIZE, agentBinary: AGENT_BUILD_PATH });
    await driver.create(specFor(id, fx.templateRootfs, { cpus: 1, memoryMb: 256, pids: 32, diskMb: 32 }));
    conn = await connectAgent(driver.agentEndpoint(id), { timeoutMs: 5000 });
  });
  after(async () => {
    conn?.close();
    await driver?.destroy(id).catch((e: unknown) => console.error(e));
    await driver?.close();
    fx?.cleanup();
  });

  it('keeps /tmp on the sandbox disk (no tmpfs): its writes land in the upper layer and hit the quota', async () => {
    const r = await run(conn, 'grep -c " /tmp " /proc/self/mountinfo; echo x > /tmp/on-disk; dd if=/dev/zero of=/tmp/big bs=1M count=64 2>&1; echo rc=$?');
    assert.match(r.out, /^0\n/, 'no mount at /tmp');
    assert.match(r.out, /No space left on device/);
    assert.ok(fs.existsSync(path.join(fx.paths.sandboxDir(id), 'disk', 'upper', 'tmp', 'on-disk')));
    assert.ok(fs.existsSync(path.join(fx.paths.sandboxDir(id), 'rootfs', 'tmp', TMP_KEEP_FILE)));
    await run(conn, 'rm -f /tmp/big');
  });

  it('holds processes to the pids limit inside gVisor (EAGAIN), and the sandbox goes on', async () => {
    const r = await run(conn, 'i=0; while [ $i -lt 40 ]; do sleep 5 </dev/null >/dev/null 2>&1 & i=$((i+1)); done 2>&1 | grep -c "can.t fork"; true');
    assert.ok(Number(r.out.trim()) > 0, `some forks were refused: ${r.out}`);
    await run(conn, 'kill -9 -1 2>/dev/null; true');
    let alive = '';
    for (let i = 0; i < 50 && alive !== 'alive\n'; i++) {
      alive = (await run(conn, 'echo alive').catch(() => ({ out: '' }))).out;
      if (alive !== 'alive\n') await new Promise((res) => setTimeout(res, 100));
    }
    assert.equal(alive, 'alive\n');
    assert.equal((await driver.inspect(id)).status, 'running');
  });

  it('answers unsupported for pause, resume, update and exportChanges, as its capabilities say', async () => {
    const c = driver.capabilities;
    assert.deepEqual([c.isolation, c.pause, c.snapshot, c.updateResources, c.exportChanges], ['gvisor', false, false, false, false]);
    for (const p of [driver.pause(id), driver.resume(id), driver.update(id, { pids: 64 }), driver.exportChanges(id, fx.root)]) {
      await assert.rejects(p, (e: unknown) => e instanceof UnsupportedError && /gVisor backend does not support/.test(e.message));
    }
  });

  it('lists as leftovers only its own sandboxes, not a container sandbox dir beside them', async () => {
    const other = path.join(fx.paths.sandboxes, 'not-gvisor');
    fs.mkdirSync(other, { recursive: true });
    try {
      const left = await driver.listLeftovers();
      assert.ok(left.includes(id));
      assert.ok(!left.includes('not-gvisor'));
    } finally {
      fs.rmSync(other, { recursive: true });
    }
  });
});
