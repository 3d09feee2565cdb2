/** The driver contract (contract.ts) against GvisorDriver (runsc, ptrace platform) with the real agent. */
import { execFileSync } from 'node:child_process';
import { GvisorDriver } from '../../../src/runtime/gvisor/driver.js';
import { ensureHostReady } from '../../../src/runtime/doctor.js';
import { AGENT_BUILD_PATH } from '../../../src/daemon.js';
import { driverContract } from './contract.js';
import { ID_BASE, ID_SIZE, skipReason } from './fixture.js';

function gvisorSkip(): string | null {
  const base = skipReason();
  if (base) return base;
  try {
    execFileSync('runsc', ['--version'], { stdio: 'ignore' });
    return null;
  } catch {
    return 'needs runsc (apt-get install runsc, or capsule doctor --fix)';
  }
}

driverContract(
  'gvisor',
  async (fx) => {
    await ensureHostReady('crun');
    const driver = new GvisorDriver({ paths: fx.paths, idMapBase: ID_BASE, idMapSize: ID_SIZE, agentBinary: AGENT_BUILD_PATH });
    await driver.probe();
    return { driver, dataDir: fx.paths.sandboxes.replace(/\/sandboxes$/, ''), close: () => driver.close() };
  },
  gvisorSkip(),
);
