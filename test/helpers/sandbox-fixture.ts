/**
 * The fixture most interactive suites share: one daemon on a fresh data dir (made traversable for the
 * sandbox's mapped uid) and one busybox sandbox, made before the suite's tests and removed after them.
 * Call it inside `describe`; its fields are filled in by the time the first test runs.
 */
import fs from 'node:fs';
import { after, before } from 'node:test';
import { removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from './daemon.js';
import { Sandbox, type ConnectionOptions, type CreateOptions } from '../../src/sdk/index.js';

export interface SandboxFixture {
  d: TestDaemon;
  dataDir: string;
  conn: ConnectionOptions;
  sbx: Sandbox;
}

export function sandboxFixture(create: Omit<CreateOptions, keyof ConnectionOptions> = { template: 'busybox' }): SandboxFixture {
  const f = {} as SandboxFixture;
  before(async () => {
    f.dataDir = tempDataDir();
    fs.chmodSync(f.dataDir, 0o755);
    f.d = await startTestDaemon({ dataDir: f.dataDir });
    f.conn = { apiUrl: f.d.url };
    f.sbx = await Sandbox.create({ ...f.conn, ...create });
  });
  after(async () => {
    await f.sbx?.kill().catch(() => {});
    await f.d?.stop();
    if (f.dataDir) await removeDataDir(f.dataDir);
  });
  return f;
}
