/** The driver contract (contract.ts) against OciRuntimeDriver with runc and the real agent. */
import { execFileSync } from 'node:child_process';
import { OciRuntimeDriver } from '../../../src/runtime/driver.js';
import { ensureHostReady } from '../../../src/runtime/doctor.js';
import { AGENT_BUILD_PATH } from '../../../src/daemon.js';
import { driverContract } from './contract.js';
import { ID_BASE, ID_SIZE, skipReason } from './fixture.js';

function runcSkip(): string | null {
  const base = skipReason();
  if (base) return base;
  try {
    execFileSync('runc', ['--version'], { stdio: 'ignore' });
    return null;
  } catch {
    return 'needs runc';
  }
}

driverContract(
  'runc',
  async (fx) => {
    await ensureHostReady('runc');
    const driver = new OciRuntimeDriver({ runtime: 'runc', paths: fx.paths, idMapBase: ID_BASE, idMapSize: ID_SIZE, agentBinary: AGENT_BUILD_PATH });
    await driver.probe();
    return { driver, dataDir: fx.paths.sandboxes.replace(/\/sandboxes$/, ''), close: () => driver.close() };
  },
  runcSkip(),
);
