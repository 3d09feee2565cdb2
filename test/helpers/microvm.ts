/** Why microVM tests cannot run here, or false: they need root, QEMU and a guest kernel (TCG is allowed per daemon). */
import fs from 'node:fs';
import { DEFAULT_KERNEL, findQemu } from '../../src/runtime/microvm/kernel.js';

export function microvmSkip(): string | false {
  if (process.getuid?.() !== 0) return 'needs root';
  if (!findQemu()) return 'needs QEMU (apt-get install qemu-system-x86, or scripts/setup.sh)';
  const kernel = process.env.CAPSULE_MICROVM_KERNEL || DEFAULT_KERNEL;
  if (!fs.existsSync(kernel)) return `needs a guest kernel at ${kernel} (capsule doctor --fix, or scripts/setup.sh)`;
  return false;
}
