/** The driver contract (contract.ts) against OciRuntimeDriver with crun and the real agent. */
import { OciRuntimeDriver } from '../../../src/runtime/driver.js';
import { ensureHostReady } from '../../../src/runtime/doctor.js';
import { AGENT_BUILD_PATH } from '../../../src/daemon.js';
import { driverContract } from './contract.js';
import { ID_BASE, ID_SIZE, skipReason } from './fixture.js';

driverContract(
  'crun',
  async (fx) => {
    await ensureHostReady('crun');
    const driver = new OciRuntimeDriver({ runtime: 'crun', paths: fx.paths, idMapBase: ID_BASE, idMapSize: ID_SIZE, agentBinary: AGENT_BUILD_PATH });
    await driver.probe();
    return { driver, dataDir: fx.paths.sandboxes.replace(/\/sandboxes$/, ''), close: () => driver.close() };
  },
  skipReason(),
);
