/**
 * `capsule doctor`'s microVM check: QEMU with the microvm machine, a guest
 * kernel, and the accelerator this host offers. Advisory: without it the
 * daemon still serves the other isolations, and a create asking for microvm
 * says why not. `--fix` installs Debian's QEMU and unpacks Debian's cloud
 * kernel into the default kernel dir (about 27 MB from the Debian mirror).
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { NET_MODULES } from './images.js';
import type { DoctorCheck } from '../doctor.js';
import { DEFAULT_KERNEL_DIR, findKernel, findQemu, hostAccel, installKernel, installQemu, KERNEL_PACKAGE, QEMU_PACKAGE } from './kernel.js';

const NAME = 'microvm';

function machines(qemu: string): Promise<string> {
  return new Promise((resolve) => {
    const c = spawn(qemu, ['-M', 'help'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    c.stdout.on('data', (b: Buffer) => (out += b.toString()));
    c.on('error', () => resolve(''));
    c.on('close', () => resolve(out));
  });
}

export async function checkMicrovm(fix: boolean, env: NodeJS.ProcessEnv = process.env): Promise<DoctorCheck> {
  const kernelSetting = env.CAPSULE_MICROVM_KERNEL || null;
  const fixed: string[] = [];
  let qemu = findQemu();
  if (!qemu && fix) {
    try {
      await installQemu();
      fixed.push(QEMU_PACKAGE);
    } catch (e) {
      return { name: NAME, ok: false, message: (e as Error).message, fix: `apt-get update && apt-get install -y ${QEMU_PACKAGE}` };
    }
    qemu = findQemu();
  }
  if (!qemu) return { name: NAME, ok: false, message: 'QEMU is not installed: sandboxes cannot ask for isolation "microvm"', fix: `apt-get install -y ${QEMU_PACKAGE}` };
  if (!/^microvm\s/m.test(await machines(qemu))) {
    return { name: NAME, ok: false, message: `${qemu} has no microvm machine type`, fix: `apt-get install -y ${QEMU_PACKAGE} (QEMU 4.2 or later)` };
  }
  let kernel = findKernel(kernelSetting);
  if (typeof kernel === 'string' && fix && !kernelSetting) {
    try {
      fixed.push(await installKernel());
    } catch (e) {
      return { name: NAME, ok: false, message: `unpacking ${KERNEL_PACKAGE} failed: ${(e as Error).message}`, fix: 'apt-get update, then capsule doctor --fix again' };
    }
    kernel = findKernel(kernelSetting);
  }
  if (typeof kernel === 'string') {
    return { name: NAME, ok: false, message: kernel, fix: kernelSetting ? 'point CAPSULE_MICROVM_KERNEL at a kernel image' : `capsule doctor --fix (unpacks ${KERNEL_PACKAGE} into ${DEFAULT_KERNEL_DIR})` };
  }
  // A kernel unpacked before microVMs had networking lacks the virtio-net modules: unpack it again.
  const lacksNet = (k: { modulesDir: string | null }) => k.modulesDir !== null && !NET_MODULES.every((m) => fs.existsSync(path.join(k.modulesDir!, `${m}.ko`)));
  if (lacksNet(kernel) && fix && !kernelSetting) {
    try {
      fixed.push(await installKernel());
      const again = findKernel(kernelSetting);
      if (typeof again !== 'string') kernel = again;
    } catch (e) {
      return { name: NAME, ok: false, message: `unpacking ${KERNEL_PACKAGE} failed: ${(e as Error).message}`, fix: 'apt-get update, then capsule doctor --fix again' };
    }
  }
  const accel = hostAccel();
  const noNet = lacksNet(kernel) ? `; its modules lack ${NET_MODULES.join(', ')}, so microVMs get network "none" only (capsule doctor --fix unpacks them)` : '';
  const what = `${qemu}, kernel ${kernel.kernel}${kernel.modulesDir ? ' (+ modules)' : ''}${noNet}`;
  if (accel === 'tcg') {
    const allowed = /^(1|true)$/i.test(env.CAPSULE_MICROVM_ALLOW_TCG ?? '');
    // Not a failure of this host's setup (nothing here can fix it): ok, and the message says microvm is off.
    return {
      name: NAME,
      ok: true,
      ...(fixed.length ? { fixed: true } : {}),
      message: allowed
        ? `${what}; no hardware virtualization: VMs run under software emulation (TCG), allowed by CAPSULE_MICROVM_ALLOW_TCG (tests only: the emulator is the only boundary)`
        : `${what}; no hardware virtualization here (no kvm_intel/kvm_amd with /dev/kvm), so isolation "microvm" is off: under emulation (TCG) QEMU itself would be the only boundary (CAPSULE_MICROVM_ALLOW_TCG=1 allows it, for tests only)`,
    };
  }
  return { name: NAME, ok: true, ...(fixed.length ? { fixed: true } : {}), message: `${what}; KVM (isolation "microvm" available)` };
}
