/**
 * Fixtures for the runtime integration tests: a busybox rootfs owned by the
 * mapped id range, a stand-in agent (a shell script that sleeps, so fd 3 stays
 * open), and a private data dir. Each fixture removes what it made.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { dataPaths, type DataPaths } from '../../../src/config/index.js';
import type { ContainerSpec } from '../../../src/runtime/types.js';
import { unmountBelow } from '../../helpers/daemon.js';

export const ID_BASE = 100000;

/** Runs a command inside a container and returns its exit code and output. */
export type ContainerExec = (id: string, argv: string[]) => { code: number | null; stdout: string; stderr: string };

/** The tightened seccomp filter's answer to each syscall /bin/probe (fixtures/seccomp-probe.c) tries. */
export const PROBE_VERDICTS = {
  thread: 'OK',
  fork: 'OK',
  unshare_user: 'EPERM',
  unshare_net: 'EPERM',
  clone_newuser: 'EPERM',
  clone3: 'ENOSYS',
  setns: 'EPERM',
  keyctl: 'EPERM',
  io_uring_setup: 'EPERM',
  userfaultfd: 'EPERM',
  bpf: 'EPERM',
};

/** Runs /bin/probe in the container and checks every verdict; skipped (with a warning) without the probe. */
export function assertProbeVerdicts(fx: Fixture, exec: ContainerExec, id: string): void {
  if (!fx.hasProbe) {
    console.warn('SKIPPING the syscall-level seccomp probe: needs gcc and libc6-dev to build a static binary');
    return;
  }
  const out = exec(id, ['/bin/probe']).stdout;
  const got = Object.fromEntries(out.trim().split('\n').map((l) => l.split('=') as [string, string]));
  assert.deepEqual(got, PROBE_VERDICTS);
}
export const ID_SIZE = 65536;

/** A ContainerSpec for one layer (the fixture's template) with the given limits and disk. */
export function specFor(id: string, rootfs: string, r: { cpus: number; memoryMb: number; pids: number; diskMb: number }): ContainerSpec {
  return { id, layers: [{ path: rootfs }], writable: { diskMb: r.diskMb }, resources: { cpus: r.cpus, memoryMb: r.memoryMb, pids: r.pids }, network: { mode: 'none' } };
}

const APPLETS = ['sh', 'sleep', 'cat', 'echo', 'ls', 'id', 'ps', 'mount', 'umount', 'hostname', 'unshare', 'touch', 'stat', 'grep', 'true', 'false', 'mkdir', 'rm', 'readlink', 'wc', 'head', 'ip', 'nsenter', 'chroot'];

export interface Fixture {
  root: string;
  /** True when /bin/probe (fixtures/seccomp-probe.c, static) is in the template. */
  hasProbe: boolean;
  paths: DataPaths;
  templateRootfs: string;
  agentBinary: string;
  cleanup(): void;
}

/** Why these tests cannot run here, or null when they can. */
export function skipReason(): string | null {
  if (process.getuid?.() !== 0) return 'needs root';
  if (!fs.existsSync('/bin/busybox')) return 'needs busybox-static (/bin/busybox)';
  try {
    execFileSync('crun', ['--version'], { stdio: 'ignore' });
  } catch {
    return 'needs crun';
  }
  return null;
}

export function makeFixture(): Fixture {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-rt-'));
  fs.chmodSync(root, 0o755);
  const paths = dataPaths(path.join(root, 'data'));
  const templateRootfs = paths.templateRootfs('busybox');
  fs.mkdirSync(path.join(templateRootfs, 'bin'), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(templateRootfs, 'bin', 'busybox'));
  fs.chmodSync(path.join(templateRootfs, 'bin', 'busybox'), 0o755);
  for (const a of APPLETS) fs.symlinkSync('busybox', path.join(templateRootfs, 'bin', a));
  for (const d of ['etc', 'tmp', 'proc', 'sys', 'dev', 'root', '.capsule', 'usr/bin', 'sbin']) {
    fs.mkdirSync(path.join(templateRootfs, d), { recursive: true });
  }
  fs.chmodSync(path.join(templateRootfs, 'tmp'), 0o1777);
  fs.writeFileSync(path.join(templateRootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
  fs.writeFileSync(path.join(templateRootfs, 'etc/group'), 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n');
  const hasProbe = buildProbe(path.join(templateRootfs, 'bin', 'probe'));
  execFileSync('chown', ['-R', '-h', `${ID_BASE}:${ID_BASE}`, templateRootfs]);

  // Stand-in agent: keeps running (and so keeps fd 3) until killed.
  fs.mkdirSync(paths.bin, { recursive: true, mode: 0o755 });
  const agentBinary = path.join(paths.bin, 'agent');
  fs.writeFileSync(agentBinary, '#!/bin/sh\nexec sleep 1000000\n', { mode: 0o755 });
  return {
    root,
    hasProbe,
    paths,
    templateRootfs,
    agentBinary,
    cleanup() {
      // Never rm -rf through a sandbox's disk or overlay that a failed test left mounted.
      const left = unmountBelow(root);
      if (left.length > 0) throw new Error(`fixture ${root} still has mounts: ${left.join(', ')}`);
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}

/** Compile the seccomp probe statically (gcc + libc6-dev); false when that is not possible here. */
function buildProbe(out: string): boolean {
  // Source sits in the source tree (tsc does not copy .c files to dist).
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [
    path.join(here, 'fixtures', 'seccomp-probe.c'),
    path.resolve(here, '../../../../test/integration/runtime/fixtures/seccomp-probe.c'),
  ];
  const src = candidates.find((c) => fs.existsSync(c));
  if (!src) return false;
  try {
    execFileSync('gcc', ['-O1', '-static', '-pthread', '-o', out, src], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
