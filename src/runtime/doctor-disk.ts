/**
 * Doctor checks for per-sandbox disks: the mount helper is built, mke2fs and
 * loop devices exist, and one tiny sandbox disk can really be made, mounted
 * under an overlay and torn down (the only way to know that loop devices,
 * ext4 and overlay work together in this kernel and container).
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { DoctorCheck } from './doctor.js';
import { MOUNT_HELPER_PATH, mountHelperExists, setupSandboxMounts, teardownSandboxMounts } from './mounts.js';
import { resolveBinary } from './oci-cli.js';
import { readMountPoints, runTool, sandboxLayout } from './overlay.js';

const SBIN_PATH = '/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin';

export async function checkSandboxDisk(fix: boolean, helper = MOUNT_HELPER_PATH, scratchDir?: string): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  const built = mountHelperExists(helper);
  checks.push(
    built
      ? { name: 'mount helper', ok: true, message: helper }
      : { name: 'mount helper', ok: false, message: `${helper} is missing`, fix: 'npm run build (needs musl-tools or gcc)' },
  );

  const mke2fs = resolveBinaryIn('mke2fs');
  checks.push(
    mke2fs
      ? { name: 'mke2fs', ok: true, message: mke2fs }
      : { name: 'mke2fs', ok: false, message: 'mke2fs not found (sandbox disks are ext4 images)', fix: 'apt-get install e2fsprogs' },
  );

  let loop = fs.existsSync('/dev/loop-control');
  let loopFixed = false;
  if (!loop && fix) {
    await runTool('modprobe', ['loop']).catch(() => undefined);
    loop = fs.existsSync('/dev/loop-control');
    loopFixed = loop;
  }
  checks.push(
    loop
      ? { name: 'loop devices', ok: true, ...(loopFixed ? { fixed: true } : {}), message: '/dev/loop-control present' }
      : { name: 'loop devices', ok: false, message: '/dev/loop-control is missing', fix: 'modprobe loop (in a container: run it privileged with /dev/loop-control)' },
  );

  if (built && mke2fs && loop && process.getuid?.() === 0) {
    const scratch = scratchDir && fs.existsSync(scratchDir) ? scratchDir : os.tmpdir();
    checks.push(await trySandboxDisk(helper, scratch));
  }
  return checks;
}

function resolveBinaryIn(name: string): string | null {
  const saved = process.env.PATH;
  process.env.PATH = `${saved ?? ''}:${SBIN_PATH}`;
  try {
    return resolveBinary(name);
  } finally {
    if (saved === undefined) delete process.env.PATH;
    else process.env.PATH = saved;
  }
}

/** Make, mount and remove one 16 MiB sandbox disk with an empty template. */
async function trySandboxDisk(helper: string, scratch: string): Promise<DoctorCheck> {
  const root = await fsp.mkdtemp(path.join(scratch, '.doctor-disk-'));
  const layout = sandboxLayout(path.join(root, 'sbx'));
  const started = performance.now();
  try {
    const template = path.join(root, 'template');
    await fsp.mkdir(template);
    await setupSandboxMounts(
      // Any regular file stands in for the agent: only its copy onto the disk is exercised.
      { layout, layers: [template], diskMb: 16, owner: 0, agentBinary: helper, directIo: true },
      { helper, timeoutMs: 20_000 },
    );
    await teardownSandboxMounts(layout.dir, { helper });
    const ms = Math.round(performance.now() - started);
    return { name: 'sandbox disk', ok: true, message: `a 16 MiB disk + overlay in ${scratch} mounted and removed in ${ms} ms` };
  } catch (e) {
    await teardownSandboxMounts(layout.dir, { helper }).catch(() => undefined);
    return { name: 'sandbox disk', ok: false, message: (e as Error).message, fix: 'modprobe loop ext4 overlay; free a loop device (losetup -D)' };
  } finally {
    // Never remove through a mount that teardown could not undo.
    const stillMounted = (await readMountPoints()).some((m) => m.startsWith(`${root}/`));
    if (!stillMounted) await fsp.rm(root, { recursive: true, force: true });
  }
}
