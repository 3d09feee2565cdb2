import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { buildOciSpec } from '../../../src/runtime/bundle.js';
import { buildGvisorSpec, GVISOR_SOCKET_MOUNT_DIR, gvisorHostTasks, gvisorSeccomp, type GvisorBundleInput } from '../../../src/runtime/gvisor/bundle.js';
import { tightenSeccomp } from '../../../src/runtime/seccomp.js';

const input: GvisorBundleInput = {
  id: 'sbx-gv',
  rootfs: '/var/lib/capsule/sandboxes/sbx-gv/rootfs',
  agentBinary: '/var/lib/capsule/bin/capsule-agent',
  agentDir: '/var/lib/capsule/sandboxes/sbx-gv/disk/agent',
  socketDir: '/var/lib/capsule/gvisor/sock/sbx-gv',
  resources: { cpus: 1, memoryMb: 512, pids: 100 },
  idMapBase: 100000,
  idMapSize: 65536,
  seccomp: { defaultAction: 'SCMP_ACT_ERRNO', architectures: ['SCMP_ARCH_X86_64'], syscalls: [] },
};

type AnyObj = Record<string, any>;

describe('buildGvisorSpec', () => {
  const spec = buildGvisorSpec(input);
  const proc = spec.process as AnyObj;
  const linux = spec.linux as AnyObj;

  test('the agent binds its own socket in the bind-mounted socket dir (runsc passes no fds)', () => {
    assert.deepEqual(proc.args, ['/.capsule/capsule-agent', '--listen', `${GVISOR_SOCKET_MOUNT_DIR}/agent.sock`]);
    const m = spec.mounts.find((x) => x.destination === GVISOR_SOCKET_MOUNT_DIR);
    assert.deepEqual(m, { destination: GVISOR_SOCKET_MOUNT_DIR, type: 'bind', source: input.socketDir, options: ['bind', 'rw', 'nosuid', 'nodev', 'noexec'] });
  });

  test('no mount at /tmp: it stays part of the root (on the sandbox disk; the driver keeps it non-empty)', () => {
    assert.equal(spec.mounts.find((x) => x.destination === '/tmp'), undefined);
  });

  test('pids: RLIMIT_NPROC inside, a looser cap on the host cgroup that holds the sentry and its stubs', () => {
    assert.deepEqual(proc.rlimits.find((r: AnyObj) => r.type === 'RLIMIT_NPROC'), { type: 'RLIMIT_NPROC', soft: 100, hard: 100 });
    assert.equal(linux.resources.pids.limit, gvisorHostTasks(100));
    assert.ok(gvisorHostTasks(64) >= 2 * 1700, 'well above what a fork bomb held to 64 guest processes took (ptrace stubs)');
  });

  test('otherwise the container policy: user namespace mapping, limits, capabilities, seccomp, no crun annotation', () => {
    const base = buildOciSpec({ ...input, runtime: 'runsc' });
    assert.deepEqual(linux.uidMappings, (base.linux as AnyObj).uidMappings);
    assert.deepEqual(linux.resources.memory, (base.linux as AnyObj).resources.memory);
    assert.deepEqual(linux.resources.cpu, (base.linux as AnyObj).resources.cpu);
    assert.deepEqual(proc.capabilities, (base.process as AnyObj).capabilities);
    assert.equal(proc.noNewPrivileges, true);
    assert.deepEqual(linux.seccomp, input.seccomp);
    assert.equal(spec.annotations, undefined);
  });

  test('refuses a relative socket dir', () => {
    assert.throws(() => buildGvisorSpec({ ...input, socketDir: 'sock' }), /socketDir must be absolute/);
  });
});

describe('gvisorSeccomp', () => {
  test('clone3 goes through to gVisor (runsc would turn its ENOSYS into EPERM); every other rule stays', () => {
    const tight = tightenSeccomp({
      defaultAction: 'SCMP_ACT_ERRNO',
      architectures: ['SCMP_ARCH_X86_64'],
      syscalls: [{ names: ['read', 'clone', 'clone3', 'unshare'], action: 'SCMP_ACT_ALLOW' }],
    });
    const g = gvisorSeccomp(tight);
    const clone3 = g.syscalls.filter((r) => r.names.includes('clone3'));
    assert.deepEqual(clone3, [{ names: ['clone3'], action: 'SCMP_ACT_ALLOW' }]);
    const others = (s: typeof g) => s.syscalls.filter((r) => !r.names.includes('clone3'));
    assert.deepEqual(others(g), others(tight));
    assert.ok(tight.syscalls.some((r) => r.names.includes('clone3') && r.action === 'SCMP_ACT_ERRNO'), 'the input is unchanged');
  });
});
