import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { conditionGroups, SECCOMP_LINES_FORMAT, seccompToLines } from '../../../src/runtime/seccomp-lines.js';
import { buildSandboxSeccomp, type MobyProfile, type OciSeccomp } from '../../../src/runtime/seccomp.js';
import { SANDBOX_CAPABILITIES } from '../../../src/runtime/bundle.js';
import { isCapsuleError } from '../../../src/errors/index.js';

const base: OciSeccomp = {
  defaultAction: 'SCMP_ACT_ERRNO',
  defaultErrnoRet: 38,
  architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'],
  syscalls: [],
};

function lines(s: OciSeccomp): string[] {
  const text = seccompToLines(s);
  assert.ok(text.endsWith('\n'), 'last line unterminated');
  return text.slice(0, -1).split('\n');
}

function refused(s: OciSeccomp, re: RegExp) {
  assert.throws(() => seccompToLines(s), (e: unknown) => isCapsuleError(e) && e.code === 'runtime_error' && re.test(e.message));
}

describe('seccompToLines', () => {
  test('header, default with its errno, arches in order, end with the rule count', () => {
    assert.deepEqual(lines(base), [
      SECCOMP_LINES_FORMAT,
      'default SCMP_ACT_ERRNO 38',
      'arch SCMP_ARCH_X86_64',
      'arch SCMP_ARCH_X86',
      'arch SCMP_ARCH_X32',
      'end 0',
    ]);
  });

  test('a missing errno is EPERM, as in crun', () => {
    const { defaultErrnoRet: _, ...noErrno } = base;
    assert.equal(lines({ ...noErrno, defaultAction: 'SCMP_ACT_ERRNO' })[1], 'default SCMP_ACT_ERRNO 1');
    assert.equal(lines({ ...noErrno, defaultAction: 'SCMP_ACT_ALLOW' })[1], 'default SCMP_ACT_ALLOW 1');
    const l = lines({ ...base, syscalls: [{ names: ['chroot'], action: 'SCMP_ACT_ERRNO' }] });
    assert.equal(l[5], 'rule SCMP_ACT_ERRNO 1 chroot 0');
  });

  test('one line per name, in the rule order; arguments ANDed in one rule', () => {
    const l = lines({
      ...base,
      syscalls: [
        { names: ['read', 'write'], action: 'SCMP_ACT_ALLOW' },
        { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: 38 },
        {
          names: ['personality', 'ptrace'],
          action: 'SCMP_ACT_ALLOW',
          args: [
            { index: 0, value: 8, valueTwo: 0, op: 'SCMP_CMP_EQ' },
            { index: 1, value: 0xffffffff, op: 'SCMP_CMP_MASKED_EQ' },
          ],
        },
      ],
    });
    assert.deepEqual(l.slice(5), [
      'rule SCMP_ACT_ALLOW 1 read 0',
      'rule SCMP_ACT_ALLOW 1 write 0',
      'rule SCMP_ACT_ERRNO 38 clone3 0',
      'rule SCMP_ACT_ALLOW 1 personality 2 0 SCMP_CMP_EQ 8 0 1 SCMP_CMP_MASKED_EQ 4294967295 0',
      'rule SCMP_ACT_ALLOW 1 ptrace 2 0 SCMP_CMP_EQ 8 0 1 SCMP_CMP_MASKED_EQ 4294967295 0',
      'end 5',
    ]);
  });

  test('conditions on the same argument become one rule each (any of them matches), as crun does', () => {
    const args = [
      { index: 0, value: 1, valueTwo: 0, op: 'SCMP_CMP_EQ' },
      { index: 0, value: 2, valueTwo: 0, op: 'SCMP_CMP_EQ' },
      { index: 1, value: 3, valueTwo: 0, op: 'SCMP_CMP_EQ' },
    ];
    assert.deepEqual(conditionGroups(args), [[args[0]], [args[1]], [args[2]]]);
    assert.deepEqual(conditionGroups([args[0]!, args[2]!]), [[args[0], args[2]]]);
    assert.deepEqual(conditionGroups(undefined), [[]]);
    assert.deepEqual(conditionGroups([]), [[]]);
    const l = lines({ ...base, syscalls: [{ names: ['socket'], action: 'SCMP_ACT_ALLOW', args }] });
    assert.deepEqual(l.slice(5), [
      'rule SCMP_ACT_ALLOW 1 socket 1 0 SCMP_CMP_EQ 1 0',
      'rule SCMP_ACT_ALLOW 1 socket 1 0 SCMP_CMP_EQ 2 0',
      'rule SCMP_ACT_ALLOW 1 socket 1 1 SCMP_CMP_EQ 3 0',
      'end 3',
    ]);
  });

  test('only the first six conditions count, as in crun', () => {
    const cond = (index: number, value: number) => ({ index, value, valueTwo: 0, op: 'SCMP_CMP_EQ' });
    // Six distinct indexes first: one rule of six conditions; the seventh and eighth are dropped.
    const distinct = Array.from({ length: 8 }, (_, i) => cond(i % 6, i));
    assert.deepEqual(conditionGroups(distinct), [distinct.slice(0, 6)]);
    // A repeat among the first six: one rule per condition, still only six.
    const repeated = [cond(0, 1), cond(0, 2), cond(1, 3), cond(2, 4), cond(3, 5), cond(4, 6), cond(5, 7)];
    assert.deepEqual(conditionGroups(repeated), repeated.slice(0, 6).map((c) => [c]));
  });

  test('what crun would refuse, or the format cannot carry exactly, is refused', () => {
    refused({ ...base, defaultAction: 'SCMP_ACT_ALLOW', defaultErrnoRet: 1 }, /errno value given for SCMP_ACT_ALLOW/);
    refused({ ...base, syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', errnoRet: 1 }] }, /errno value given/);
    refused({ ...base, defaultAction: 'ALLOW' }, /not SCMP_ACT_/);
    refused({ ...base, architectures: ['x86 64'] }, /architecture/);
    refused({ ...base, syscalls: [{ names: ['read\nrule SCMP_ACT_ALLOW 1 mount 0'], action: 'SCMP_ACT_ALLOW' }] }, /syscall name/);
    refused({ ...base, syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 6, value: 0, op: 'SCMP_CMP_EQ' }] }] }, /index 6/);
    refused({ ...base, syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 2 ** 60, op: 'SCMP_CMP_EQ' }] }] }, /exact unsigned/);
    refused({ ...base, syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: -1, op: 'SCMP_CMP_EQ' }] }] }, /exact unsigned/);
    refused({ ...base, syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 1, op: 'EQ' }] }] }, /SCMP_CMP_/);
  });

  test('the sandbox policy: every name and every clone rule is there', () => {
    const profile: MobyProfile = {
      defaultAction: 'SCMP_ACT_ERRNO',
      defaultErrnoRet: 38,
      archMap: [{ architecture: 'SCMP_ARCH_X86_64', subArchitectures: ['SCMP_ARCH_X86', 'SCMP_ARCH_X32'] }],
      syscalls: [{ names: ['read', 'clone', 'unshare'], action: 'SCMP_ACT_ALLOW' }],
    };
    const policy = buildSandboxSeccomp(profile, { capabilities: SANDBOX_CAPABILITIES, arch: 'amd64' });
    const l = lines(policy);
    const rules = l.filter((x) => x.startsWith('rule '));
    assert.equal(l.at(-1), `end ${rules.length}`);
    assert.equal(rules.filter((r) => / clone 1 0 SCMP_CMP_MASKED_EQ /.test(r)).length, 8, 'one allow + seven namespace bits');
    assert.ok(rules.includes('rule SCMP_ACT_ALLOW 1 clone 1 0 SCMP_CMP_MASKED_EQ 2114060288 0'));
    assert.ok(rules.includes('rule SCMP_ACT_ERRNO 1 clone 1 0 SCMP_CMP_MASKED_EQ 268435456 268435456'), 'CLONE_NEWUSER');
    assert.ok(rules.includes('rule SCMP_ACT_ERRNO 38 clone3 0'));
    assert.ok(rules.includes('rule SCMP_ACT_ERRNO 1 unshare 0'));
    assert.ok(rules.includes('rule SCMP_ACT_ALLOW 1 read 0'));
  });
});
