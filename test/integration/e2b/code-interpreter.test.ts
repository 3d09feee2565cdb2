/**
 * E2B's unmodified `@e2b/code-interpreter` SDK against a real daemon: its default template
 * (code-interpreter-v1) is Capsule's `python` template, whose rootfs is debootstrapped once per
 * machine and cached (CAPSULE_TEMPLATE_CACHE), as in test/integration/interpreter. runCode goes
 * through the interpreter service the native API uses; commands and files through envd.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { NotFoundError, Sandbox, TimeoutError } from '@e2b/code-interpreter';
import { removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { debootstrapSkip } from '../../helpers/debootstrap.js';

const skip = debootstrapSkip('needs debootstrap (the python template)');

let d: TestDaemon;
let sbx: Sandbox | undefined;

describe('@e2b/code-interpreter against Capsule', { skip, timeout: 30 * 60_000 }, () => {
  before(async () => {
    const dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir });
    const r = await fetch(`${d.url}/v1/keys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${d.adminKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'e2b-ci', format: 'e2b' }),
    });
    assert.equal(r.status, 201, await r.clone().text());
    process.env.E2B_API_KEY = ((await r.json()) as { key: string }).key;
    process.env.E2B_API_URL = `${d.url}/e2b`;
    process.env.E2B_SANDBOX_URL = d.url;
    sbx = await Sandbox.create({ allowInternetAccess: false, timeoutMs: 20 * 60_000 });
  });
  after(async () => {
    await sbx?.kill().catch(() => undefined);
    delete process.env.E2B_API_KEY;
    delete process.env.E2B_API_URL;
    delete process.env.E2B_SANDBOX_URL;
    await d?.stop();
    if (d) await removeDataDir(d.dataDir);
  });

  it('maps code-interpreter-v1 to the python template, with E2B’s user and home', async () => {
    const s = sbx!;
    assert.equal((await s.getInfo()).templateId, 'python');
    assert.equal((await s.commands.run('whoami; pwd; echo $HOME')).stdout, 'user\n/home/user\n/home/user\n');
    assert.equal((await s.commands.run('whoami', { user: 'root' })).stdout, 'root\n');
    await s.files.write('proj/a.txt', 'hi');
    assert.equal((await s.commands.run('stat -c %U /home/user/proj /home/user/proj/a.txt')).stdout, 'user\nuser\n');
  });

  it('keeps state across runCode calls and streams stdout', async () => {
    const s = sbx!;
    const seen: string[] = [];
    const a = await s.runCode('x = 21\nprint("side")\nx * 2', { onStdout: (m) => void seen.push(m.line) });
    assert.equal(a.error, undefined, JSON.stringify(a.error));
    assert.equal(a.text, '42');
    assert.deepEqual(a.logs.stdout, ['side\n']);
    assert.deepEqual(seen, ['side\n']);
    const b = await s.runCode('x + 1');
    assert.equal(b.text, '22');
    assert.equal(b.executionCount, a.executionCount! + 1);
    assert.equal((await s.runCode('"hello"')).text, 'hello', "a str's repr without its single quotes, as E2B answers");
    assert.equal((await s.runCode('"it\'s"')).text, '"it\'s"', 'a repr in double quotes keeps them');
  });

  it('returns a matplotlib figure as a PNG', async () => {
    const r = await sbx!.runCode('import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()');
    assert.equal(r.error, undefined, JSON.stringify(r.error));
    const png = r.results.find((x) => x.png !== undefined)?.png;
    assert.ok(png, JSON.stringify(r.results.map((x) => x.formats())));
    assert.deepEqual([...Buffer.from(png, 'base64').subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
  });

  it('reports an exception with its name, value and traceback', async () => {
    const r = await sbx!.runCode('1 / 0');
    assert.equal(r.error?.name, 'ZeroDivisionError');
    assert.equal(r.error?.value, 'division by zero');
    assert.match(r.error?.traceback ?? '', /ZeroDivisionError/);
  });

  it('creates, lists, restarts and removes code contexts', async () => {
    const s = sbx!;
    const ctx = await s.createCodeContext({ language: 'python', cwd: '/tmp' });
    assert.equal(ctx.language, 'python');
    assert.equal(ctx.cwd, '/tmp');
    await s.runCode('y = 5', { context: ctx });
    assert.equal((await s.runCode('y', { context: ctx })).text, '5');
    assert.equal((await s.runCode('import os; os.getcwd()', { context: ctx })).text, '/tmp');
    assert.equal((await s.runCode('y')).error?.name, 'NameError', 'the default context is another one');
    assert.ok((await s.listCodeContexts()).some((c) => c.id === ctx.id));
    await s.restartCodeContext(ctx);
    assert.equal((await s.runCode('y', { context: ctx })).error?.name, 'NameError');
    await s.removeCodeContext(ctx);
    assert.equal((await s.listCodeContexts()).some((c) => c.id === ctx.id), false);
  });

  it('streams results and errors to callbacks, passes env vars, and answers an unknown context with 404', async () => {
    const s = sbx!;
    const results: Array<string | undefined> = [];
    const errors: string[] = [];
    await s.runCode('display(1)\n2', { onResult: (r) => void results.push(r.text) });
    assert.deepEqual(results, ['1', '2']);
    await s.runCode('raise ValueError("no")', { onError: (e) => void errors.push(`${e.name}:${e.value}`) });
    assert.deepEqual(errors, ['ValueError:no']);
    assert.equal((await s.runCode('import os; os.environ["FOO"]', { envs: { FOO: 'from envs' } })).text, 'from envs');
    const nowhere = { id: 'no-such-context', language: 'python', cwd: '/' };
    await assert.rejects(s.runCode('1', { context: nowhere }), (e: unknown) => e instanceof NotFoundError);
    await assert.rejects(s.runCode('1', { context: { ...nowhere, id: 'ctx-000000000000' } }), (e: unknown) => e instanceof NotFoundError);
  });

  it("stops waiting at the SDK's timeoutMs, and the context goes on", async () => {
    const s = sbx!;
    await s.runCode('kept = "yes"');
    const t0 = Date.now();
    await assert.rejects(s.runCode('import time\ntime.sleep(60)', { timeoutMs: 1_500 }), (e: unknown) => e instanceof TimeoutError);
    assert.ok(Date.now() - t0 < 15_000, `gave up after ${Date.now() - t0} ms`);
    assert.equal((await s.runCode('kept')).text, 'yes');
  });

  it('runs JavaScript', async () => {
    const r = await sbx!.runCode('const z = 40; z + 2', { language: 'js' });
    assert.equal(r.error, undefined, JSON.stringify(r.error));
    assert.equal(r.text, '42');
  });
});
