/**
 * What a microVM needs from the host: QEMU, a guest kernel (with the few
 * modules the guest init loads), and an accelerator.
 *
 * The kernel is a setting (`CAPSULE_MICROVM_KERNEL`, a bzImage or an
 * uncompressed vmlinux); by default Debian's cloud kernel, unpacked by
 * `capsule doctor --fix` or scripts/setup.sh into DEFAULT_KERNEL_DIR as
 * `vmlinuz` plus `modules/<name>.ko` for the GUEST_MODULES it builds as
 * modules. A kernel elsewhere brings its modules in a `modules/` dir beside
 * it, or has them built in (then nothing is loaded): that is how to point
 * the backend at a smaller, faster kernel (see docs/adr/0017).
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { resolveBinary } from '../oci-cli.js';
import { runTool } from '../overlay.js';
import { GUEST_MODULES } from './images.js';

export const DEFAULT_KERNEL_DIR = '/var/cache/capsule/microvm/kernel';
export const DEFAULT_KERNEL = path.join(DEFAULT_KERNEL_DIR, 'vmlinuz');
export const QEMU_BINARY = 'qemu-system-x86_64';
/** The Debian package that brings QEMU_BINARY. */
export const QEMU_PACKAGE = 'qemu-system-x86';
/** Debian's metapackage for the cloud kernel: it depends on the current versioned image package. */
export const KERNEL_PACKAGE = 'linux-image-cloud-amd64';

export interface GuestKernel {
  kernel: string;
  /** A dir of `<module>.ko`, or null when the kernel has them built in. */
  modulesDir: string | null;
}

/** The kernel to boot and its modules dir, or why there is none. */
export function findKernel(setting: string | null | undefined): GuestKernel | string {
  const kernel = setting || DEFAULT_KERNEL;
  if (!fs.existsSync(kernel)) {
    return setting
      ? `the guest kernel ${kernel} (CAPSULE_MICROVM_KERNEL) does not exist`
      : `no guest kernel at ${DEFAULT_KERNEL}: run \`capsule doctor --fix\` (unpacks Debian's ${KERNEL_PACKAGE}) or set CAPSULE_MICROVM_KERNEL`;
  }
  const mods = path.join(path.dirname(kernel), 'modules');
  return { kernel, modulesDir: fs.existsSync(mods) ? mods : null };
}

export type Accel = 'kvm' | 'tcg';

/**
 * KVM only with hardware virtualization (kvm_intel or kvm_amd loaded and /dev/kvm): a PVM host's
 * /dev/kvm (kvm_pvm) runs only PVM-built guest kernels, and QEMU hangs with Debian's.
 */
export function hostAccel(): Accel {
  const hw = fs.existsSync('/sys/module/kvm_intel') || fs.existsSync('/sys/module/kvm_amd');
  return hw && fs.existsSync('/dev/kvm') ? 'kvm' : 'tcg';
}

export function findQemu(bin = QEMU_BINARY): string | null {
  return resolveBinary(bin);
}

async function tool(cmd: string, args: string[], timeoutMs: number, cwd?: string): Promise<string> {
  const { spawn } = await import('node:child_process');
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(cwd ? { cwd } : {}) });
    let out = '';
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}: ${err.trim().split('\n').slice(-2).join(' ')}`));
    });
  });
}

/** apt-get install QEMU (as root). */
export async function installQemu(): Promise<void> {
  const r = await runTool('apt-get', ['install', '-y', '--no-install-recommends', QEMU_PACKAGE], 15 * 60_000, 'apt-get is needed to install QEMU');
  if (r.code !== 0) throw new Error(`apt-get install ${QEMU_PACKAGE} failed: ${r.stderr.split('\n').slice(-2).join(' ')}`);
}

/**
 * Unpack Debian's cloud kernel into dir (default DEFAULT_KERNEL_DIR) without installing it on the host:
 * `apt-get download` of the versioned image package, `dpkg-deb -x`, then the bzImage as `vmlinuz` and
 * GUEST_MODULES' .ko files (uncompressed in bookworm) as `modules/`. About 27 MB to download.
 */
export async function installKernel(dir = DEFAULT_KERNEL_DIR): Promise<string> {
  const deps = await tool('apt-cache', ['depends', KERNEL_PACKAGE], 60_000);
  const pkg = deps.match(/Depends:\s*(linux-image-\S+)/)?.[1];
  if (!pkg) throw new Error(`apt-cache knows no ${KERNEL_PACKAGE} (apt-get update?)`);
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'capsule-kernel-'));
  try {
    await fsp.chmod(work, 0o755); // apt's _apt user downloads into it
    await tool('apt-get', ['download', pkg], 10 * 60_000, work);
    const deb = (await fsp.readdir(work)).find((f) => f.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download ${pkg} left no .deb`);
    const x = path.join(work, 'x');
    await tool('dpkg-deb', ['-x', path.join(work, deb), x], 5 * 60_000);
    const vmlinuz = (await fsp.readdir(path.join(x, 'boot'))).find((f) => f.startsWith('vmlinuz-'));
    if (!vmlinuz) throw new Error(`${pkg} has no /boot/vmlinuz-*`);
    const staging = `${dir}.new`;
    await fsp.rm(staging, { recursive: true, force: true });
    await fsp.mkdir(path.join(staging, 'modules'), { recursive: true });
    await fsp.copyFile(path.join(x, 'boot', vmlinuz), path.join(staging, 'vmlinuz'));
    const modRoot = path.join(x, 'lib', 'modules');
    const release = (await fsp.readdir(modRoot))[0];
    if (release) {
      const found = new Map<string, string>();
      const walk = async (d: string): Promise<void> => {
        for (const e of await fsp.readdir(d, { withFileTypes: true })) {
          const p = path.join(d, e.name);
          if (e.isDirectory()) await walk(p);
          else if (e.name.endsWith('.ko')) found.set(e.name.slice(0, -3), p);
        }
      };
      await walk(path.join(modRoot, release, 'kernel'));
      for (const m of GUEST_MODULES) {
        const p = found.get(m);
        if (p) await fsp.copyFile(p, path.join(staging, 'modules', `${m}.ko`));
      }
    }
    await fsp.writeFile(path.join(staging, 'SOURCE'), `${pkg}\n`);
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.mkdir(path.dirname(dir), { recursive: true });
    await fsp.rename(staging, dir);
    return pkg;
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}
