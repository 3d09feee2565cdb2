/**
 * `capsule doctor`'s memory-snapshot check: CRIU 4 installed and passing
 * `criu check` (src/runtime/criu.ts). Advisory: without it sandboxes work,
 * only hibernate (`pause({ memory: 'disk' })`) is refused with the reason.
 * `--fix` runs scripts/build-criu.sh: CRIU 4.1.1 built once from Debian
 * trixie's source package and cached in /var/cache/capsule/criu (about a
 * minute the first time; later runs only install the cached binary).
 * Hibernate also needs the runc runtime (CAPSULE_RUNTIME=runc): said here too.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DoctorCheck } from './doctor.js';
import { checkCriu } from './criu.js';
import { runTool } from './overlay.js';
import { runtimeFlavor } from './oci-cli.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** dist/src/runtime/doctor-criu.js -> scripts/build-criu.sh. */
export const BUILD_CRIU_SCRIPT = path.resolve(here, '..', '..', '..', 'scripts', 'build-criu.sh');

const NAME = 'memory snapshots (criu)';

export async function checkMemorySnapshots(fix: boolean, runtime: string): Promise<DoctorCheck> {
  let c = await checkCriu();
  let fixed = false;
  if (!c.ok && fix && process.getuid?.() === 0) {
    const r = await runTool('bash', [BUILD_CRIU_SCRIPT], 900_000, 'bash is needed to build CRIU').catch((e: Error) => ({ code: 1, signal: null, stderr: e.message }));
    c = await checkCriu();
    if (!c.ok) return { name: NAME, ok: false, message: `building CRIU 4 failed: ${r.stderr.split('\n').slice(-3).join(' ')}`, fix: `bash ${BUILD_CRIU_SCRIPT}` };
    fixed = true;
  }
  if (!c.ok) return { name: NAME, ok: false, message: `hibernate is unavailable: ${c.reason}`, fix: `capsule doctor --fix (or bash ${BUILD_CRIU_SCRIPT})` };
  const flavor = runtimeFlavor(runtime);
  const note = flavor === 'runc' ? 'hibernate available' : `hibernate needs the runc runtime: run the daemon with CAPSULE_RUNTIME=runc (this one uses ${flavor})`;
  return { name: NAME, ok: true, ...(fixed ? { fixed: true } : {}), message: `CRIU ${c.version} at ${c.bin} passes \`criu check\`; ${note}` };
}
