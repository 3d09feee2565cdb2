/**
 * `capsule doctor`'s gVisor check: runsc is installed, runs, and starts a
 * sandbox on the ptrace platform here (a trial `runsc do /bin/true`, ~0.5 s).
 * Advisory: without gVisor the daemon still serves container sandboxes, and a
 * create asking for gvisor says why not. `--fix` installs Debian's runsc.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { DoctorCheck } from '../doctor.js';
import { OciCli, resolveBinary, summarizeStderr } from '../oci-cli.js';
import { runTool } from '../overlay.js';

const NAME = 'gvisor';
const INSTALL = 'apt-get install -y --no-install-recommends runsc';

export async function checkGvisor(fix: boolean, runsc = 'runsc'): Promise<DoctorCheck> {
  let bin = resolveBinary(runsc);
  let fixed = false;
  if (!bin && fix && process.getuid?.() === 0 && runsc === 'runsc') {
    const r = await runTool('apt-get', ['install', '-y', '--no-install-recommends', 'runsc'], 300_000, 'apt-get is needed to install runsc').catch((e: Error) => ({
      code: 1,
      signal: null,
      stderr: e.message,
    }));
    bin = resolveBinary(runsc);
    if (!bin) return { name: NAME, ok: false, message: `installing runsc failed: ${r.stderr.split('\n').slice(-2).join(' ')}`, fix: `apt-get update && ${INSTALL}` };
    fixed = true;
  }
  if (!bin) {
    return { name: NAME, ok: false, message: 'runsc (gVisor) is not installed: sandboxes cannot ask for isolation "gvisor"', fix: INSTALL };
  }
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-doctor-runsc-'));
  try {
    const cli = new OciCli(bin, root);
    const v = await cli.runCaptured(['--version'], { timeoutMs: 10_000 });
    const version = v.stdout.split('\n')[0]?.trim() ?? '';
    if (v.code !== 0) return { name: NAME, ok: false, message: `${bin} --version failed: ${summarizeStderr(v.stderr)}`, fix: `apt-get install --reinstall runsc` };
    // The platform the driver uses; kvm spins forever on PVM hosts like this one.
    const t = await cli.runCaptured(['--platform=ptrace', '--network=none', 'do', '/bin/true'], { timeoutMs: 30_000 }).catch((e: Error) => ({
      code: -1,
      stderr: e.message,
    }));
    if (t.code !== 0) {
      return {
        name: NAME,
        ok: false,
        message: `${version}, but a trial sandbox failed: ${summarizeStderr(t.stderr) || `exit ${t.code}`}`,
        fix: 'run as root; ptrace must be allowed (kernel.yama.ptrace_scope below 3); see runsc --debug logs',
      };
    }
    return {
      name: NAME,
      ok: true,
      ...(fixed ? { fixed: true } : {}),
      message: `${version}: a trial sandbox ran on the ptrace platform (isolation "gvisor" available)${pidMaxNote()}`,
    };
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

/**
 * On the ptrace platform a gVisor sandbox holds host tasks for its guest's (a fork bomb held to 64 guest
 * processes took ~1,700), up to gvisorHostTasks(pids) each: a host with the old default pid_max (32768) runs
 * out after a few busy ones.
 */
function pidMaxNote(): string {
  let max = 0;
  try {
    max = Number(fs.readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim());
  } catch {
    return '';
  }
  return max > 0 && max < 1 << 20 ? `; note: kernel.pid_max is ${max} and each busy gVisor sandbox may hold thousands of host tasks: sysctl -w kernel.pid_max=4194304` : '';
}
