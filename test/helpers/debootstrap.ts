/**
 * Why a test that builds a Debian template (debootstrap) cannot run here, or
 * false when it can: it needs root and the debootstrap program.
 */
import { spawnSync } from 'node:child_process';

const haveDebootstrap = spawnSync('sh', ['-c', 'command -v debootstrap'], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } }).status === 0;

/** `missing`: the skip reason when debootstrap is absent. */
export function debootstrapSkip(missing = 'needs debootstrap'): string | false {
  return process.getuid?.() !== 0 ? 'needs root' : !haveDebootstrap ? missing : false;
}
