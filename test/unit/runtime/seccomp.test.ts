import assert from 'node:assert/strict';
import fs from 'node:fs';
import { describe, test } from 'node:test';
import {
  buildSandboxSeccomp,
  CLONE_NAMESPACE_FLAGS,
  convertMobyProfile,
  DEFAULT_SECCOMP_PROFILE,
  DENIED_SYSCALLS,
  kernelAtLeast,
  loadDefaultSeccomp,
  tightenSeccomp,
  type MobyProfile,
  type OciSeccomp,
} from '../../../src/runtime/seccomp.js';
import { SANDBOX_CAPABILITIES } from '../../../src/runtime/bundle.js';

const sample: MobyProfile = {
  defaultAction: 'SCMP_ACT_ERRNO',
  defaultErrnoRet: 38,
  archMap: [
    { architecture: 'SCMP_ARCH_X86_64', subArchitectures: ['SCMP_ARCH_X86', 'SCMP_ARCH_X32'] },
    { architecture: 'SCMP_ARCH_AARCH64', subArchitectures: ['SCMP_ARCH_ARM'] },
  ],
  syscalls: [
    { names: ['read', 'write', 'clone', 'clone3', 'unshare', 'setns', 'keyctl', 'mount'], action: 'SCMP_ACT_ALLOW' },
    { names: ['arch_prctl'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['amd64', 'x32'] } },
    { names: ['set_tls'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['arm', 'arm64'] } },
    { names: ['chroot'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_CHROOT'] } },
    { names: ['chroot'], action: 'SCMP_ACT_ERRNO', errnoRet: 1, excludes: { caps: ['CAP_SYS_CHROOT'] } },
    { names: ['bpf'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_ADMIN'] } },
    { names: ['newfancy'], action: 'SCMP_ACT_ALLOW', includes: { minKernel: '7.1' } },
    { names: ['personality'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 8, op: 'SCMP_CMP_EQ' }] },
    { names: ['socket'], action: 'SCMP_ACT_ALLOW', args: null },
  ],
};

function namesWith(s: OciSeccomp, action: string): Set<string> {
  return new Set(s.syscalls.filter((r) => r.action === action && !r.args).flatMap((r) => r.names));
}

describe('convertMobyProfile', () => {
  test('filters by arch, caps and kernel; keeps default action, errno and args', () => {
    const out = convertMobyProfile(sample, { capabilities: ['SYS_CHROOT'], arch: 'amd64', kernel: '6.18.44-x' });
    assert.equal(out.defaultAction, 'SCMP_ACT_ERRNO');
    assert.equal(out.defaultErrnoRet, 38);
    assert.deepEqual(out.architectures, ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']);
    const allowed = namesWith(out, 'SCMP_ACT_ALLOW');
    assert.ok(allowed.has('arch_prctl'));
    assert.ok(!allowed.has('set_tls'), 'arm-only rule kept');
    assert.ok(allowed.has('chroot'), 'cap-gated allow missing');
    assert.ok(!namesWith(out, 'SCMP_ACT_ERRNO').has('chroot'), 'excluded-by-cap rule kept');
    assert.ok(!allowed.has('bpf'));
    assert.ok(!allowed.has('newfancy'), 'minKernel not honoured');
    const pers = out.syscalls.find((r) => r.names.includes('personality'));
    assert.deepEqual(pers?.args, [{ index: 0, value: 8, valueTwo: 0, op: 'SCMP_CMP_EQ' }]);
    assert.ok(allowed.has('socket'), 'args: null is no condition');
  });

  test('without the cap the ERRNO rule applies', () => {
    const out = convertMobyProfile(sample, { capabilities: [], arch: 'amd64' });
    const deny = out.syscalls.find((r) => r.names.includes('chroot'));
    assert.deepEqual(deny, { names: ['chroot'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 });
    assert.ok(convertMobyProfile(sample, { capabilities: [], arch: 'amd64', kernel: '7.2' }).syscalls.some((r) => r.names.includes('newfancy')));
  });

  test('arm64 gets its own arches and rules', () => {
    const out = convertMobyProfile(sample, { capabilities: [], arch: 'arm64' });
    assert.deepEqual(out.architectures, ['SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM']);
    assert.ok(namesWith(out, 'SCMP_ACT_ALLOW').has('set_tls'));
    assert.ok(!namesWith(out, 'SCMP_ACT_ALLOW').has('arch_prctl'));
  });

  test('kernelAtLeast', () => {
    assert.ok(kernelAtLeast('6.18.44-fc', '5.8'));
    assert.ok(kernelAtLeast('5.8', '5.8'));
    assert.ok(!kernelAtLeast('5.4.0', '5.8'));
    assert.ok(kernelAtLeast('10.0', '9.99'));
  });
});

describe('tightenSeccomp', () => {
  const base = convertMobyProfile(sample, { capabilities: [...SANDBOX_CAPABILITIES], arch: 'amd64' });
  const out = tightenSeccomp(base);

  test('namespace syscalls are no longer plainly allowed', () => {
    const allowed = namesWith(out, 'SCMP_ACT_ALLOW');
    for (const n of ['clone', 'clone3', ...DENIED_SYSCALLS]) assert.ok(!allowed.has(n), `${n} still allowed unconditionally`);
    assert.ok(allowed.has('read') && allowed.has('mount'), 'unrelated names lost');
    assert.ok(base.syscalls[0]?.names.includes('unshare'), 'input was mutated');
  });

  test('clone is allowed only without namespace flags; with them EPERM', () => {
    const clone = out.syscalls.filter((r) => r.names.includes('clone'));
    const allow = clone.filter((r) => r.action === 'SCMP_ACT_ALLOW');
    assert.equal(allow.length, 1);
    assert.deepEqual(allow[0]?.args, [{ index: 0, value: CLONE_NAMESPACE_FLAGS, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }]);
    assert.equal(CLONE_NAMESPACE_FLAGS, 0x7e020000);
    const deny = clone.filter((r) => r.action === 'SCMP_ACT_ERRNO');
    const bits = deny.map((r) => r.args?.[0]?.value ?? 0);
    assert.equal(bits.reduce((a, b) => a | b, 0), CLONE_NAMESPACE_FLAGS);
    for (const r of deny) {
      assert.equal(r.errnoRet, 1);
      assert.equal(r.args?.[0]?.op, 'SCMP_CMP_MASKED_EQ');
      assert.equal(r.args?.[0]?.value, r.args?.[0]?.valueTwo);
    }
    // Thread and fork flags pass the allow rule.
    const CLONE_THREAD_FLAGS = 0x003d0f00; // VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
    assert.equal(CLONE_THREAD_FLAGS & CLONE_NAMESPACE_FLAGS, 0);
  });

  test('clone3 is ENOSYS, the denied list EPERM', () => {
    const c3 = out.syscalls.filter((r) => r.names.includes('clone3'));
    assert.deepEqual(c3, [{ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: 38 }]);
    for (const n of DENIED_SYSCALLS) {
      const rules = out.syscalls.filter((r) => r.names.includes(n));
      assert.deepEqual(rules.map((r) => [r.action, r.errnoRet]), [['SCMP_ACT_ERRNO', 1]], n);
    }
    for (const n of ['unshare', 'setns', 'keyctl', 'add_key', 'request_key', 'io_uring_setup', 'io_uring_enter', 'io_uring_register', 'userfaultfd', 'bpf', 'perf_event_open']) {
      assert.ok(DENIED_SYSCALLS.includes(n), n);
    }
  });
});

describe('the installed default profile', { skip: fs.existsSync(DEFAULT_SECCOMP_PROFILE) ? false : `${DEFAULT_SECCOMP_PROFILE} missing (apt-get install golang-github-containers-common)` }, () => {
  test('converts to a sane x86_64 filter, cached', () => {
    const a = loadDefaultSeccomp(SANDBOX_CAPABILITIES);
    assert.equal(a, loadDefaultSeccomp([...SANDBOX_CAPABILITIES].reverse()), 'not cached');
    const allowed = namesWith(a, 'SCMP_ACT_ALLOW');
    assert.ok(allowed.size > 300, `only ${allowed.size} syscalls allowed`);
    for (const n of ['read', 'write', 'execve', 'wait4', 'futex', 'arch_prctl', 'chroot']) assert.ok(allowed.has(n), n);
    for (const n of ['bpf', 'perf_event_open', 'unshare', 'setns', 'keyctl', 'io_uring_setup', 'clone', 'clone3']) assert.ok(!allowed.has(n), n);
    assert.ok(!allowed.has('open_by_handle_at'), 'needs CAP_DAC_READ_SEARCH');
    assert.equal(a.architectures[0], 'SCMP_ARCH_X86_64');
  });

  test('a missing file says what to install', () => {
    assert.throws(() => loadDefaultSeccomp(SANDBOX_CAPABILITIES, '/nonexistent/seccomp.json'), /apt-get install golang-github-containers-common/);
  });

  test('buildSandboxSeccomp is deterministic', () => {
    const profile = JSON.parse(fs.readFileSync(DEFAULT_SECCOMP_PROFILE, 'utf8')) as MobyProfile;
    const o = { capabilities: SANDBOX_CAPABILITIES, arch: 'amd64', kernel: '6.18.0' };
    assert.deepEqual(buildSandboxSeccomp(profile, o), buildSandboxSeccomp(profile, o));
  });
});
