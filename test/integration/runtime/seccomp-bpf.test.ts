/**
 * The precompiled seccomp filter against the real crun: it reaches crun as
 * the run.oci.seccomp_bpf_data annotation, crun loads it, and it blocks and
 * allows what the policy says. And it is the program crun builds itself from
 * linux.seccomp: byte for byte, and call by call through a BPF interpreter.
 * Needs root, crun and busybox-static; skips loudly otherwise.
 */
import { AGENT_BUILD_PATH } from '../../../src/daemon.js';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { OciRuntimeDriver, type RuntimeLogger } from '../../../src/runtime/driver.js';
import { ensureHostReady } from '../../../src/runtime/doctor.js';
import { SANDBOX_CAPABILITIES } from '../../../src/runtime/bundle.js';
import { CLONE_NAMESPACE_FLAGS, loadDefaultSeccomp } from '../../../src/runtime/seccomp.js';
import { SECCOMP_BPF_ANNOTATION, SeccompBpfCompiler } from '../../../src/runtime/seccomp-bpf.js';
import { assertProbeVerdicts, ID_BASE, ID_SIZE, makeFixture, skipReason, specFor, type Fixture } from './fixture.js';
import { actionName, AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, runSeccompFilter, type SeccompCall } from './seccomp-sim.js';

const skip = skipReason();
if (skip) console.warn(`SKIPPING precompiled seccomp integration tests: ${skip}`);

const RESOURCES = { cpus: 1, memoryMb: 128, pids: 64, diskMb: 256 };
const X32_BIT = 0x40000000;
const ALLOW = 0x7fff0000;
const ERRNO = (e: number) => 0x00050000 | e;

/** libseccomp's syscall numbers on x86_64, x86 and x32, from a small C helper (fixtures/syscall-numbers.c). */
function syscallNumbers(names: string[], workDir: string): Map<string, [number, number, number]> | null {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const src = [path.join(here, 'fixtures', 'syscall-numbers.c'), path.resolve(here, '../../../../test/integration/runtime/fixtures/syscall-numbers.c')].find((p) =>
    fs.existsSync(p),
  );
  if (!src) return null;
  const bin = path.join(workDir, 'syscall-numbers');
  try {
    execFileSync('gcc', ['-O1', '-o', bin, src, '-lseccomp'], { stdio: 'ignore' });
  } catch {
    return null;
  }
  const out = execFileSync(bin, { input: `${names.join('\n')}\n`, encoding: 'utf8' });
  const map = new Map<string, [number, number, number]>();
  for (const line of out.trim().split('\n')) {
    const [name, a, b, c] = line.split(' ');
    map.set(name!, [Number(a), Number(b), Number(c)]);
  }
  return map;
}

/** Argument values worth trying for a policy: every compared value, its neighbours, and the clone flag cases. */
function interestingArgs(values: number[]): bigint[] {
  const out = new Set<bigint>([0n, 1n, 0xffffffffn, 0xffffffff_ffffffffn, 1n << 32n]);
  for (const v of values) for (const d of [-1, 0, 1]) if (v + d >= 0) out.add(BigInt(v + d));
  const CLONE_THREAD_FLAGS = 0x003d0f00n; // what pthread_create passes
  const FORK = 0x01200011n; // CHILD_SETTID|CHILD_CLEARTID|SIGCHLD, what fork() passes
  for (let bit = 0; bit < 32; bit++) {
    const f = 1n << BigInt(bit);
    out.add(f);
    out.add(f | CLONE_THREAD_FLAGS);
    if ((CLONE_NAMESPACE_FLAGS & Number(f)) !== 0) out.add(f | FORK | (1n << 40n));
  }
  out.add(CLONE_THREAD_FLAGS);
  out.add(FORK);
  out.add(BigInt(CLONE_NAMESPACE_FLAGS));
  return [...out];
}

describe('precompiled seccomp filter (crun)', { skip: skip ?? false }, () => {
  let fx: Fixture;
  const made: [OciRuntimeDriver, string][] = [];
  const warnings: unknown[] = [];
  const logger: RuntimeLogger = { info() {}, warn: (o) => warnings.push(o), error() {} };

  function driverWith(opts: { precompileSeccomp?: boolean; seccompTool?: string } = {}) {
    return new OciRuntimeDriver({ runtime: 'crun', paths: fx.paths, idMapBase: ID_BASE, idMapSize: ID_SIZE, agentBinary: fx.agentBinary, logger, ...opts });
  }

  async function create(d: OciRuntimeDriver, id: string) {
    made.push([d, id]);
    const info = await d.create(specFor(id, fx.templateRootfs, RESOURCES));
    assert.equal(info.status, 'running');
    // The stand-in agent is a script that execs sleep; `crun exec` into a process in the middle of
    // execve fails now and then (setns EPERM, "fail startup"), so wait until the exec is done.
    for (let i = 0; i < 200 && fs.readFileSync(`/proc/${info.pid}/comm`, 'utf8').trim() !== 'sleep'; i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
    return info;
  }

  function exec(id: string, argv: string[]) {
    const r = spawnSync('crun', ['--root', fx.paths.runtimeState, 'exec', id, ...argv], { encoding: 'utf8', timeout: 10_000 });
    return { code: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  }

  const configOf = (id: string) => JSON.parse(fs.readFileSync(path.join(fx.paths.sandboxDir(id), 'bundle', 'config.json'), 'utf8')) as {
    annotations?: Record<string, string>;
    linux: { seccomp?: unknown };
  };
  /** The program crun stored for the container and loaded into it (state dir, `<id>/seccomp.bpf`). */
  const loadedBpf = (id: string) => fs.readFileSync(path.join(fx.paths.runtimeState, id, 'seccomp.bpf'));

  function assertFiltered(id: string) {
    const r = exec(id, ['cat', '/proc/1/status']);
    assert.match(r.stdout, /^Seccomp:\s+2$/m, `init runs without a seccomp filter (exit ${r.code}: ${r.stderr.trim()})`);
    assert.notEqual(exec(id, ['unshare', '-U', 'true']).code, 0, 'unshare -U succeeded inside the sandbox');
  }

  before(async () => {
    await ensureHostReady('crun');
    fx = makeFixture();
  });

  after(async () => {
    for (const [d, id] of made) {
      try {
        await d.destroy(id);
      } catch (e) {
        console.error(`cleanup of sandbox ${id} failed:`, e);
      }
    }
    fx?.cleanup();
  });

  test('the filter reaches crun as the annotation, crun loads it, and it holds', async () => {
    const id = 'sbx-bpf';
    await create(driverWith(), id);
    const config = configOf(id);
    const b64 = config.annotations?.[SECCOMP_BPF_ANNOTATION];
    assert.ok(b64, 'no run.oci.seccomp_bpf_data annotation in config.json');
    assert.ok(config.linux.seccomp, 'linux.seccomp was dropped');
    const bpf = Buffer.from(b64, 'base64');
    assert.ok(bpf.equals(loadedBpf(id)), 'crun did not load the annotation');
    const cached = fs.readdirSync(fx.paths.seccompCache);
    assert.equal(cached.length, 1);
    assert.ok(fs.readFileSync(path.join(fx.paths.seccompCache, cached[0]!)).equals(bpf), 'disk cache differs');

    assertFiltered(id);
    assert.notEqual(exec(id, ['unshare', '-n', 'true']).code, 0, 'unshare -n succeeded');
    // Ordinary programs, pipes, subshells, background jobs.
    const sh = exec(id, ['sh', '-c', 'sleep 0.01 & (echo sub | cat); ls /bin | grep -c busybox; wait; echo done']);
    assert.equal(sh.code, 0, sh.stderr);
    assert.equal(sh.stdout, 'sub\n1\ndone\n');
    assertProbeVerdicts(fx, exec, id);
    assert.deepEqual(warnings, []);
  });

  test('it is the program crun compiles itself from linux.seccomp: byte for byte, and call by call', async () => {
    const id = 'sbx-plain';
    await create(driverWith({ precompileSeccomp: false }), id);
    assert.equal(configOf(id).annotations, undefined, 'annotation present with precompileSeccomp: false');
    const crunBpf = loadedBpf(id);
    const policy = loadDefaultSeccomp(SANDBOX_CAPABILITIES);
    const ours = await new SeccompBpfCompiler().compile(policy);
    assert.ok(ours.equals(crunBpf), `programs differ: ours ${ours.length / 8} instructions, crun's ${crunBpf.length / 8}`);

    // Call by call: the same verdict for every syscall of the policy on every architecture, with the
    // argument values the policy compares against. (Implied by equal bytes; this names the calls that
    // differ should the bytes ever differ, and pins the verdicts that matter.)
    const names = [...new Set(policy.syscalls.flatMap((r) => r.names))];
    const numbers = syscallNumbers([...names, 'socketcall'], fx.root);
    if (!numbers) {
      console.warn('SKIPPING the call-by-call comparison: needs gcc and libseccomp-dev');
      return;
    }
    const values = policy.syscalls.flatMap((r) => (r.args ?? []).flatMap((a) => [a.value, a.valueTwo ?? 0]));
    const argSets = interestingArgs(values);
    // Arguments matter only where a rule compares them; elsewhere two calls suffice.
    const comparedArgs = new Map<string, Set<number>>();
    for (const r of policy.syscalls) for (const n of r.names) for (const a of r.args ?? []) (comparedArgs.get(n) ?? comparedArgs.set(n, new Set()).get(n)!).add(a.index);
    const ONES = 0xffffffff_ffffffffn;
    const calls: { what: string; call: SeccompCall }[] = [];
    for (const [name, [x64, x86, x32]] of numbers) {
      const targets: [string, number, number][] = [
        ['x86_64', AUDIT_ARCH_X86_64, x64],
        ['x86', AUDIT_ARCH_I386, x86],
        ['x32', AUDIT_ARCH_X86_64, x32],
      ];
      for (const [arch, audit, nr] of targets) {
        if (nr < 0) continue; // not a syscall there (or multiplexed: socketcall covers those)
        calls.push({ what: `${name} on ${arch}`, call: { nr, arch: audit, args: [0n, 0n, 0n, 0n, 0n, 0n] } });
        calls.push({ what: `${name} on ${arch}, all bits set`, call: { nr, arch: audit, args: Array(6).fill(ONES) } });
        for (const argIndex of comparedArgs.get(name) ?? []) {
          for (const v of argSets) {
            const args = [0n, 0n, 0n, 0n, 0n, 0n];
            args[argIndex] = v;
            calls.push({ what: `${name} on ${arch} with arg${argIndex}=0x${v.toString(16)}`, call: { nr, arch: audit, args } });
          }
        }
      }
    }
    calls.push({ what: 'an unknown syscall', call: { nr: 1999, arch: AUDIT_ARCH_X86_64 } });
    calls.push({ what: 'another architecture (aarch64)', call: { nr: 0, arch: 0xc00000b7 } });
    const differ = calls.filter(({ call }) => runSeccompFilter(ours, call) !== runSeccompFilter(crunBpf, call));
    assert.deepEqual(differ.slice(0, 10).map((c) => c.what), [], `${differ.length} of ${calls.length} calls get different verdicts`);
    // The comparison has teeth: a policy with one clone rule less is told apart.
    const weaker = await new SeccompBpfCompiler().compile({ ...policy, syscalls: policy.syscalls.filter((r) => !(r.names.includes('clone') && r.args?.[0]?.value === 0x10000000)) });
    const caught = calls.filter(({ call }) => runSeccompFilter(weaker, call) !== runSeccompFilter(crunBpf, call)).map((c) => c.what);
    assert.ok(caught.length > 0 && caught.every((w) => w.startsWith('clone ')), `weaker policy: ${caught.slice(0, 5).join('; ')}`);

    // The verdicts that make the sandbox what it is.
    const verdict = (name: string, args: bigint[] = [], arch: 'x86_64' | 'x86' | 'x32' = 'x86_64') => {
      const [x64, x86, x32] = numbers.get(name)!;
      const [nr, audit] = arch === 'x86_64' ? [x64, AUDIT_ARCH_X86_64] : arch === 'x86' ? [x86, AUDIT_ARCH_I386] : [x32, AUDIT_ARCH_X86_64];
      return actionName(runSeccompFilter(ours, { nr, arch: audit, args }));
    };
    assert.equal(verdict('read'), actionName(ALLOW));
    assert.equal(verdict('read', [], 'x86'), actionName(ALLOW));
    assert.equal(verdict('read', [], 'x32'), actionName(ALLOW));
    assert.ok(numbers.get('read')![2] & X32_BIT, 'x32 numbers carry the x32 bit');
    assert.equal(verdict('unshare', [0x10000000n]), actionName(ERRNO(1)));
    assert.equal(verdict('keyctl'), actionName(ERRNO(1)));
    assert.equal(verdict('setns'), actionName(ERRNO(1)));
    assert.equal(verdict('clone3'), actionName(ERRNO(38)));
    assert.equal(verdict('clone', [0x003d0f00n]), actionName(ALLOW), 'thread clone');
    assert.equal(verdict('clone', [0x01200011n]), actionName(ALLOW), 'fork clone');
    assert.equal(verdict('clone', [0x10000000n | 0x01200011n]), actionName(ERRNO(1)), 'CLONE_NEWUSER');
    assert.equal(verdict('clone', [0x40000000n], 'x86'), actionName(ERRNO(1)), 'CLONE_NEWNET on x86');
    assert.equal(actionName(runSeccompFilter(ours, { nr: 1999, arch: AUDIT_ARCH_X86_64 })), actionName(ERRNO(38)), 'default action');
    console.log(`# ${calls.length} calls compared, ${ours.length / 8} BPF instructions, identical`);
  });

  test('without the compiler: one warning, the plain object, and the sandbox is still filtered', async () => {
    warnings.length = 0;
    const d = driverWith({ seccompTool: path.join(fx.root, 'missing', 'capsule-seccomp-bpf') });
    for (const id of ['sbx-nobpf-1', 'sbx-nobpf-2']) {
      await create(d, id);
      const config = configOf(id);
      assert.equal(config.annotations, undefined);
      assert.ok(config.linux.seccomp);
      assertFiltered(id);
    }
    assert.equal(warnings.length, 1, 'warned more (or less) than once');
    assert.match(JSON.stringify(warnings[0]), /capsule-seccomp-bpf is missing/);
  });

  test('runc gets the plain object only', { skip: spawnSync('runc', ['--version']).status === 0 ? false : 'needs runc' }, async () => {
    // The real agent: under runc it binds its own socket (checkpointable, ADR 0018), and create waits until it listens.
    const d = new OciRuntimeDriver({ runtime: 'runc', paths: fx.paths, idMapBase: ID_BASE, idMapSize: ID_SIZE, agentBinary: AGENT_BUILD_PATH, logger });
    const id = 'sbx-runc-bpf';
    made.push([d, id]);
    assert.equal((await d.create(specFor(id, fx.templateRootfs, RESOURCES))).status, 'running');
    const config = configOf(id);
    assert.equal(config.annotations, undefined);
    assert.ok(config.linux.seccomp);
  });
});
