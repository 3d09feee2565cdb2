/**
 * The driver contract (contract.ts) against MicrovmDriver (QEMU -M microvm, ADR 0017) with the real agent.
 * Under software emulation (TCG) where the host has no hardware virtualization: each create boots a VM
 * (a few seconds), so this file adds a handful of boots to the suite.
 */
import { ensureHostReady } from '../../../src/runtime/doctor.js';
import { AGENT_BUILD_PATH } from '../../../src/daemon.js';
import { MicrovmDriver } from '../../../src/runtime/microvm/driver.js';
import { findKernel, hostAccel } from '../../../src/runtime/microvm/kernel.js';
import { microvmSkip } from '../../helpers/microvm.js';
import { driverContract } from './contract.js';
import { ID_BASE, ID_SIZE, skipReason } from './fixture.js';

function contractSkip(): string | null {
  return skipReason() ?? (microvmSkip() || null);
}

driverContract(
  'microvm',
  async (fx) => {
    await ensureHostReady('crun');
    const kernel = findKernel(process.env.CAPSULE_MICROVM_KERNEL || null);
    if (typeof kernel === 'string') throw new Error(kernel);
    const driver = new MicrovmDriver({ paths: fx.paths, idMapBase: ID_BASE, idMapSize: ID_SIZE, agentBinary: AGENT_BUILD_PATH, kernel, accel: hostAccel() });
    await driver.probe();
    return { driver, dataDir: fx.paths.sandboxes.replace(/\/sandboxes$/, ''), close: () => driver.close() };
  },
  contractSkip(),
);
