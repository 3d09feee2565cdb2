/**
 * SeccompBpfCompiler with stand-in compilers (shell scripts): caching in
 * memory and on disk, one warning and a null answer when the tool fails.
 * The real tool against crun is tested in test/integration/runtime/seccomp-bpf.test.ts.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { isPlausibleBpf, SeccompBpfCompiler } from '../../../src/runtime/seccomp-bpf.js';
import type { OciSeccomp } from '../../../src/runtime/seccomp.js';
import { isCapsuleError } from '../../../src/errors/index.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-bpf-unit-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

const policy: OciSeccomp = { defaultAction: 'SCMP_ACT_ERRNO', architectures: ['SCMP_ARCH_X86_64'], syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW' }] };

/** A fake compiler: counts its runs in `<dir>/runs`, keeps its stdin in `<dir>/stdin`, prints `bytes` (printf format). */
function fakeTool(name: string, bytes: string, exit = 0): { tool: string; runs: () => number; stdin: () => string } {
  const dir = path.join(root, name);
  fs.mkdirSync(dir);
  const tool = path.join(dir, 'tool');
  fs.writeFileSync(
    tool,
    `#!/bin/sh\nif [ "$1" = --version ]; then echo "fake 1 libseccomp 9.9.9"; exit 0; fi\necho x >> ${dir}/runs\ncat > ${dir}/stdin\nprintf '${bytes}'\necho 'fake: something is wrong' >&2\nexit ${exit}\n`,
    { mode: 0o755 },
  );
  const read = (f: string) => (fs.existsSync(path.join(dir, f)) ? fs.readFileSync(path.join(dir, f), 'utf8') : '');
  return { tool, runs: () => read('runs').split('\n').filter(Boolean).length, stdin: () => read('stdin') };
}

const EIGHT = '\\001\\002\\003\\004\\005\\006\\007\\010';

describe('SeccompBpfCompiler', () => {
  test('compiles once per policy object, keeps the result on disk, and reads it back after a restart', async () => {
    const fake = fakeTool('ok', EIGHT);
    const cacheDir = path.join(root, 'cache-ok');
    const c = new SeccompBpfCompiler({ tool: fake.tool, cacheDir });
    const [a, b] = await Promise.all([c.precompiled(policy), c.precompiled(policy)]);
    assert.equal(a, Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]).toString('base64'));
    assert.equal(b, a);
    assert.equal(fake.runs(), 1, 'compiled twice');
    assert.match(fake.stdin(), /^capsule-seccomp-bpf 1\ndefault SCMP_ACT_ERRNO 1\narch SCMP_ARCH_X86_64\nrule SCMP_ACT_ALLOW 1 read 0\nend 1\n$/);
    const files = fs.readdirSync(cacheDir);
    assert.equal(files.length, 1);
    assert.match(files[0]!, /^[0-9a-f]{64}\.bpf$/);
    assert.equal(fs.statSync(path.join(cacheDir, files[0]!)).mode & 0o777, 0o600);

    // A new compiler (a daemon restart) with an equal but distinct object: from disk, no run.
    const again = new SeccompBpfCompiler({ tool: fake.tool, cacheDir });
    assert.equal(await again.precompiled(structuredClone(policy)), a);
    assert.equal(fake.runs(), 1, 'the disk cache was not used');

    // A different policy is a different key.
    await again.precompiled({ ...policy, defaultErrnoRet: 38 });
    assert.equal(fake.runs(), 2);
    assert.equal(fs.readdirSync(cacheDir).length, 2);
  });

  test('a damaged cache file is ignored and replaced', async () => {
    const fake = fakeTool('damaged', EIGHT);
    const cacheDir = path.join(root, 'cache-damaged');
    await new SeccompBpfCompiler({ tool: fake.tool, cacheDir }).compile(policy);
    const file = path.join(cacheDir, fs.readdirSync(cacheDir)[0]!);
    fs.writeFileSync(file, 'abc');
    const bpf = await new SeccompBpfCompiler({ tool: fake.tool, cacheDir }).compile(policy);
    assert.equal(bpf.length, 8);
    assert.equal(fake.runs(), 2);
    assert.equal(fs.readFileSync(file).length, 8);
  });

  test('a missing tool: one warning, null for every policy, and compile() says how to fix it', async () => {
    const warnings: unknown[] = [];
    const c = new SeccompBpfCompiler({ tool: path.join(root, 'nope', 'capsule-seccomp-bpf'), cacheDir: null, logger: { warn: (o) => warnings.push(o) } });
    assert.equal(await c.precompiled(policy), null);
    assert.equal(await c.precompiled({ ...policy }), null);
    assert.equal(warnings.length, 1);
    await assert.rejects(c.compile(policy), (e: unknown) => isCapsuleError(e) && /is missing: run `npm run build`/.test(e.message));
  });

  test('a failing tool and a tool that writes no program are errors, with its stderr', async () => {
    const failing = fakeTool('fails', '', 2);
    await assert.rejects(new SeccompBpfCompiler({ tool: failing.tool }).compile(policy), (e: unknown) => isCapsuleError(e) && /failed: fake: something is wrong/.test(e.message));
    const odd = fakeTool('odd', '\\001\\002\\003');
    await assert.rejects(new SeccompBpfCompiler({ tool: odd.tool }).compile(policy), /wrote 3 bytes, not a seccomp program/);
  });

  test('isPlausibleBpf', () => {
    assert.ok(isPlausibleBpf(Buffer.alloc(8)));
    assert.ok(!isPlausibleBpf(Buffer.alloc(0)));
    assert.ok(!isPlausibleBpf(Buffer.alloc(12)));
    assert.ok(!isPlausibleBpf(Buffer.alloc(8 * 4097)));
  });
});
