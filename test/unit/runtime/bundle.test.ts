import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { agentPathInSandbox, buildOciSpec, MASKED_PATHS, READONLY_PATHS, SANDBOX_CAPABILITIES, type BundleInput } from '../../../src/runtime/bundle.js';
import { parseCgroupMounts } from '../../../src/runtime/cgroups.js';
import { summarizeStderr, runtimeFlavor } from '../../../src/runtime/oci-cli.js';
import { unescapeMountPath } from '../../../src/runtime/overlay.js';
import { isStaticElf } from '../../../src/runtime/doctor.js';

const input: BundleInput = {
  id: 'sbx-1',
  rootfs: '/var/lib/capsule/sandboxes/sbx-1/rootfs',
  agentBinary: '/var/lib/capsule/bin/agent',
  resources: { cpus: 1.5, memoryMb: 512, pids: 256 },
  idMapBase: 100000,
  idMapSize: 65536,
  seccomp: { defaultAction: 'SCMP_ACT_ERRNO', architectures: ['SCMP_ARCH_X86_64'], syscalls: [] },
};

type AnyObj = Record<string, any>;

describe('buildOciSpec with agentSocketDir (runc: checkpointable)', () => {
  const spec = buildOciSpec({ ...input, runtime: 'runc', agentSocketDir: '/var/lib/capsule/sandboxes/sbx-1/sock' });
  test('the agent binds its own socket in a bound host dir and drops the host stdio', () => {
    assert.deepEqual((spec.process as AnyObj).args, ['/.capsule/agent', '--listen', '/.capsule-sock/agent.sock', '--null-stdio']);
    const m = spec.mounts.find((x) => x.destination === '/.capsule-sock');
    assert.ok(m, 'socket dir mounted');
    assert.equal(m.source, '/var/lib/capsule/sandboxes/sbx-1/sock');
    assert.ok(m.options!.includes('noexec') && m.options!.includes('nosuid'));
  });
});

describe('buildOciSpec', () => {
  const spec = buildOciSpec(input);
  const linux = spec.linux as AnyObj;
  const proc = spec.process as AnyObj;

  test('process: the agent as init, root, hardened', () => {
    assert.deepEqual(proc.args, ['/.capsule/agent', '--listen-fd', '3']);
    assert.equal(proc.cwd, '/');
    assert.deepEqual(proc.user, { uid: 0, gid: 0 });
    assert.equal(proc.noNewPrivileges, true);
    assert.equal(proc.terminal, false);
    assert.ok((proc.env as string[]).some((e) => e.startsWith('PATH=/usr/local/sbin:')));
    assert.deepEqual(proc.rlimits, [{ type: 'RLIMIT_NOFILE', soft: 1024, hard: 4096 }]);
    const caps = proc.capabilities as AnyObj;
    for (const set of ['bounding', 'effective', 'permitted']) assert.deepEqual(caps[set], [...SANDBOX_CAPABILITIES]);
    assert.deepEqual(caps.inheritable, []);
    assert.deepEqual(caps.ambient, []);
    assert.equal(SANDBOX_CAPABILITIES.length, 11);
    assert.ok(!SANDBOX_CAPABILITIES.includes('CAP_SYS_ADMIN'));
    assert.ok(!SANDBOX_CAPABILITIES.includes('CAP_NET_RAW'));
  });

  test('root, hostname, namespaces, id maps', () => {
    assert.deepEqual(spec.root, { path: input.rootfs, readonly: false });
    assert.equal(spec.hostname, 'sbx-1');
    assert.deepEqual(
      (linux.namespaces as AnyObj[]).map((n) => n.type).sort(),
      ['cgroup', 'ipc', 'mount', 'network', 'pid', 'user', 'uts'],
    );
    for (const n of linux.namespaces as AnyObj[]) assert.equal(n.path, undefined, 'no namespace is shared with the host');
    assert.deepEqual(linux.uidMappings, [{ containerID: 0, hostID: 100000, size: 65536 }]);
    assert.deepEqual(linux.gidMappings, [{ containerID: 0, hostID: 100000, size: 65536 }]);
    assert.equal(linux.cgroupsPath, '/capsule/sbx-1');
    assert.equal(linux.seccomp, input.seccomp);
  });

  test('resources', () => {
    const r = linux.resources as AnyObj;
    assert.deepEqual(r.memory, { limit: 512 * 1024 * 1024, swap: 512 * 1024 * 1024 });
    assert.deepEqual(r.cpu, { quota: 150000, period: 100000 });
    assert.deepEqual(r.pids, { limit: 256 });
    assert.deepEqual(r.devices[0], { allow: false, access: 'rwm' });
    const allowed = (r.devices as AnyObj[]).slice(1).map((d) => `${d.major}:${d.minor ?? '*'}`);
    assert.deepEqual(allowed, ['1:3', '1:5', '1:7', '1:8', '1:9', '5:0', '5:2', '136:*']);
    const noSwap = buildOciSpec({ ...input, swapAccounting: false }).linux as AnyObj;
    assert.deepEqual(noSwap.resources.memory, { limit: 512 * 1024 * 1024 });
  });

  test('mounts', () => {
    const byDest = new Map(spec.mounts.map((m) => [m.destination, m]));
    assert.equal(byDest.get('/proc')?.type, 'proc');
    assert.equal(byDest.get('/dev')?.type, 'tmpfs');
    assert.equal(byDest.get('/dev/pts')?.type, 'devpts');
    assert.ok(byDest.get('/dev/pts')?.options?.includes('newinstance'));
    assert.equal(byDest.get('/dev/shm')?.type, 'tmpfs');
    assert.equal(byDest.get('/dev/mqueue')?.type, 'mqueue');
    const sys = byDest.get('/sys');
    assert.equal(sys?.type, 'sysfs');
    assert.ok(sys?.options?.includes('ro'));
    const agent = byDest.get('/.capsule');
    assert.deepEqual(agent, { destination: '/.capsule', type: 'bind', source: '/var/lib/capsule/bin', options: ['bind', 'ro', 'nosuid', 'nodev'] });
    // The driver's copy on the sandbox disk, when given, is what gets bound.
    const onDisk = buildOciSpec({ ...input, agentDir: '/var/lib/capsule/sandboxes/sbx-1/disk/agent' }).mounts.find((m) => m.destination === '/.capsule');
    assert.equal(onDisk?.source, '/var/lib/capsule/sandboxes/sbx-1/disk/agent');
    const bindSys = buildOciSpec({ ...input, freshSysfs: false }).mounts.find((m) => m.destination === '/sys');
    assert.equal(bindSys?.type, 'bind');
    assert.ok(bindSys?.options?.includes('rbind') && bindSys.options.includes('ro'));
    // Parents before children (runtimes mount in order).
    const dests = spec.mounts.map((m) => m.destination);
    assert.ok(dests.indexOf('/dev') < dests.indexOf('/dev/pts'));
  });

  test('masked and read-only paths', () => {
    for (const p of ['/proc/kcore', '/proc/keys', '/proc/timer_list', '/proc/sched_debug', '/proc/scsi', '/sys/firmware', '/proc/acpi', '/proc/latency_stats']) {
      assert.ok((linux.maskedPaths as string[]).includes(p), p);
    }
    assert.deepEqual(linux.readonlyPaths, [...READONLY_PATHS]);
    assert.deepEqual(linux.maskedPaths, [...MASKED_PATHS]);
  });

  test('no seccomp when null; relative paths are refused; agent name follows the binary', () => {
    assert.equal((buildOciSpec({ ...input, seccomp: null }).linux as AnyObj).seccomp, undefined);
    assert.throws(() => buildOciSpec({ ...input, rootfs: 'rel/rootfs' }), /absolute/);
    assert.equal(agentPathInSandbox('/x/bin/capsule-agent'), '/.capsule/capsule-agent');
    const s = buildOciSpec({ ...input, env: { FOO: 'bar' } });
    assert.ok(((s.process as AnyObj).env as string[]).includes('FOO=bar'));
    assert.doesNotThrow(() => JSON.stringify(s));
  });

  test('the precompiled filter goes in as an annotation for crun only, next to linux.seccomp', () => {
    const bpf = Buffer.alloc(16, 7).toString('base64');
    const crun = buildOciSpec({ ...input, seccompBpf: bpf, runtime: 'crun' });
    assert.deepEqual(crun.annotations, { 'run.oci.seccomp_bpf_data': bpf });
    // Kept: crun still reads its flags, and a crun without the annotation would otherwise run unfiltered.
    assert.equal((crun.linux as AnyObj).seccomp, input.seccomp);
    for (const runtime of ['runc', 'runsc', 'other'] as const) {
      assert.equal(buildOciSpec({ ...input, seccompBpf: bpf, runtime }).annotations, undefined, runtime);
    }
    assert.equal(buildOciSpec({ ...input, seccompBpf: null, runtime: 'crun' }).annotations, undefined);
    assert.equal(buildOciSpec({ ...input, seccomp: null, seccompBpf: bpf, runtime: 'crun' }).annotations, undefined, 'a filter without its policy');
  });
});

describe('helpers', () => {
  test('parseCgroupMounts', () => {
    const text = [
      '32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu',
      '40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd',
      '41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw',
      '23 1 0:21 / /sys rw,nosuid - sysfs sysfs rw',
    ].join('\n');
    assert.deepEqual(parseCgroupMounts(text), [
      { mountPoint: '/sys/fs/cgroup/cpu', version: 1, controllers: ['cpu'] },
      { mountPoint: '/sys/fs/cgroup/systemd', version: 1, controllers: ['name=systemd'] },
      { mountPoint: '/sys/fs/cgroup/unified', version: 2, controllers: [] },
    ]);
  });

  test('summarizeStderr reads json log lines and plain text', () => {
    assert.equal(
      summarizeStderr('{"msg":"cannot open x","level":"error","time":"t"}\n\nplain line\n'),
      'cannot open x; plain line',
    );
    assert.equal(summarizeStderr('x'.repeat(50), 10), `${'x'.repeat(10)}…`);
  });

  test('runtimeFlavor', () => {
    assert.equal(runtimeFlavor('crun'), 'crun');
    assert.equal(runtimeFlavor('/usr/local/bin/runc'), 'runc');
    assert.equal(runtimeFlavor('runsc'), 'runsc');
    assert.equal(runtimeFlavor('/opt/youki'), 'other');
  });

  test('unescapeMountPath', () => {
    assert.equal(unescapeMountPath('/a\\040b'), '/a b');
  });

  test('isStaticElf', () => {
    const h = Buffer.alloc(64 + 56 * 2);
    h.writeUInt32BE(0x7f454c46, 0);
    h[4] = 2;
    h[5] = 1;
    h.writeBigUInt64LE(64n, 0x20);
    h.writeUInt16LE(56, 0x36);
    h.writeUInt16LE(2, 0x38);
    h.writeUInt32LE(1, 64); // PT_LOAD
    h.writeUInt32LE(1, 64 + 56);
    assert.equal(isStaticElf(h), true);
    h.writeUInt32LE(3, 64 + 56); // PT_INTERP
    assert.equal(isStaticElf(h), false);
    assert.equal(isStaticElf(Buffer.from('#!/bin/sh\n')), false);
  });
});
