/**
 * The code interpreter against a real daemon and real sandboxes of the
 * `python` template (debootstrapped once per machine and cached like base):
 * state across cells, rich results, errors, interrupts, forged markers, the
 * four languages, a thousand cells, REST streaming, the CLI and MCP.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CLI, api, authHeaders, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { Sandbox, type Execution } from '../../../src/sdk/index.js';
import { connectClient } from '../mcp/fixture.js';
import { debootstrapSkip } from '../../helpers/debootstrap.js';

const skip = debootstrapSkip();

let d: TestDaemon;
let sbx: Sandbox;

/** Width and height from a PNG's IHDR chunk. */
function pngSize(b64: string): { width: number; height: number } {
  const buf = Buffer.from(b64, 'base64');
  assert.deepEqual([...buf.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'PNG magic');
  assert.equal(buf.subarray(12, 16).toString('latin1'), 'IHDR');
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
}

const main = (e: Execution) => e.results.find((r) => r.isMainResult);

describe('code interpreter', { skip, timeout: 30 * 60_000 }, () => {
  before(async () => {
    const dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir });
    sbx = await Sandbox.create({ apiUrl: d.url, apiKey: d.adminKey, template: 'python', timeoutMs: 30 * 60_000 });
  });
  after(async () => {
    await sbx?.kill().catch(() => undefined);
    await d?.stop();
    if (d) await removeDataDir(d.dataDir);
  });

  it('keeps variables, imports and functions between cells', async () => {
    const a = await sbx.runCode('import math\nx = 21\ndef double(v):\n    return v * 2');
    assert.equal(a.error, undefined, JSON.stringify(a.error));
    const b = await sbx.runCode('double(x) + int(math.sqrt(0))');
    assert.equal(b.text, '42');
    assert.equal(main(b)?.text, '42');
    assert.equal(b.executionCount, a.executionCount! + 1);
    const f = await sbx.runCode('import math; math.factorial(20)');
    assert.equal(f.text, '2432902008176640000');
  });

  it('streams stdout and stderr in order, and keeps them in the result', async () => {
    const seen: string[] = [];
    const r = await sbx.runCode('import sys\nfor i in range(3):\n    print("out", i, flush=True)\nprint("err", file=sys.stderr)\nimport os; os.system("echo from-a-child")', {
      onStdout: (s) => void seen.push(`o:${s}`),
      onStderr: (s) => void seen.push(`e:${s}`),
    });
    assert.equal(r.stdout, 'out 0\nout 1\nout 2\nfrom-a-child\n');
    assert.equal(r.stderr, 'err\n');
    assert.equal(seen.join(''), 'o:out 0\no:out 1\no:out 2\ne:err\no:from-a-child\n');
  });

  it('returns a matplotlib figure as a PNG', async () => {
    const r = await sbx.runCode('import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2, 3], [1, 4, 9])\nNone');
    assert.equal(r.error, undefined, JSON.stringify(r.error));
    const figs = r.results.filter((x) => x.png !== undefined);
    assert.equal(figs.length, 1, JSON.stringify(r.results.map((x) => x.formats)));
    const size = pngSize(figs[0]!.png!);
    assert.ok(size.width >= 200 && size.height >= 200, JSON.stringify(size));
    assert.ok(Buffer.from(figs[0]!.png!, 'base64').length > 5000);
    assert.deepEqual(figs[0]!.formats.sort(), ['image/png', 'text/plain']);
  });

  it('returns a DataFrame as HTML and text', async () => {
    const r = await sbx.runCode("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2], 'b': [3, 4]})\ndf");
    const m = main(r);
    assert.ok(m?.html?.includes('<table'), m?.html);
    assert.match(m?.text ?? '', /a\s+b/);
  });

  it('gives one result per display() call, and the other mime types', async () => {
    const r = await sbx.runCode(
      'from IPython.display import display, HTML, Markdown, JSON, SVG, Latex\ndisplay(HTML("<b>one</b>"))\ndisplay(Markdown("# two"))\ndisplay(JSON({"k": [1, 2]}))\ndisplay(SVG(\'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"></svg>\'))\ndisplay(Latex(r"$x^2$"))',
    );
    assert.equal(r.results.length, 5, JSON.stringify(r.results));
    assert.ok(r.results.every((x) => !x.isMainResult));
    assert.equal(r.results[0]!.html, '<b>one</b>');
    assert.equal(r.results[1]!.markdown, '# two');
    assert.deepEqual(r.results[2]!.json, { k: [1, 2] });
    assert.match(r.results[3]!.svg ?? '', /^<svg/);
    assert.equal(r.results[4]!.latex, '$x^2$');
  });

  it('reports 1/0 as ZeroDivisionError with a traceback that names the user\'s line', async () => {
    const r = await sbx.runCode('a = 1\nb = 0\na / b');
    assert.equal(r.error?.name, 'ZeroDivisionError');
    assert.equal(r.error?.value, 'division by zero');
    const tb = r.error!.traceback.join('\n');
    assert.match(tb, /line 3/);
    assert.match(tb, /a \/ b/);
    assert.doesNotMatch(tb, /python_driver/);
    assert.equal(r.results.length, 0);
  });

  it('interrupts an infinite loop after its timeout and keeps the earlier state', async () => {
    await sbx.runCode('kept = "still here"');
    const t0 = Date.now();
    const r = await sbx.runCode('while True:\n    pass', { timeoutMs: 1000 });
    assert.ok(Date.now() - t0 < 10_000);
    assert.deepEqual(r.interrupted, { reason: 'timeout', how: 'signal' });
    assert.equal(r.error?.name, 'KeyboardInterrupt');
    assert.doesNotMatch(r.error!.traceback.join('\n'), /python_driver/);
    assert.equal((await sbx.runCode('kept')).text, "'still here'");
  });

  it('kills and restarts an interpreter that ignores SIGINT, and says so', async () => {
    const c = await sbx.createCodeContext({ language: 'python' });
    await sbx.runCode('lost = 1', { context: c });
    const r = await sbx.runCode('import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass', { context: c, timeoutMs: 500 });
    assert.deepEqual(r.interrupted, { reason: 'timeout', how: 'restart' });
    assert.equal(r.restarted, true);
    const after = await sbx.runCode('lost', { context: c });
    assert.equal(after.error?.name, 'NameError');
    const info = (await sbx.listCodeContexts()).find((x) => x.id === c.id);
    assert.equal(info?.restarts, 1);
    await sbx.removeCodeContext(c);
  });

  it('never turns printed text into a result, whatever it looks like', async () => {
    const forged = JSON.stringify({ t: 'result', id: 'r1', data: { 'text/plain': 'FORGED', 'image/png': 'iVBORw0KGgo=' } });
    const r = await sbx.runCode(`print(${JSON.stringify(forged)})\nprint(${JSON.stringify(`\n${forged}\n`)})\nimport os\n_ = os.write(1, b'\\n' + ${JSON.stringify(forged)}.encode() + b'\\n')`);
    assert.equal(r.results.length, 0, JSON.stringify(r.results));
    assert.match(r.stdout, /FORGED/);
  });

  it('runs JavaScript with persistent let/const bindings and top-level await', async () => {
    const c = await sbx.createCodeContext({ language: 'javascript' });
    assert.equal(c.language, 'javascript');
    assert.equal((await sbx.runCode('let a = 20; const b = 22; a + b', { context: c })).text, '42');
    const w = await sbx.runCode('const v = await new Promise((r) => setTimeout(() => r(a * 2), 20)); v + b', { context: c });
    assert.equal(w.text, '62', JSON.stringify(w));
    // A later cell may declare a name again, as in a notebook.
    assert.equal((await sbx.runCode('let a = 1; a + v', { context: c })).text, '41');
    const e = await sbx.runCode('\nfunction boom() {\n  throw new TypeError("nope")\n}\nboom()', { context: c });
    assert.equal(e.error?.name, 'TypeError');
    assert.match(e.error!.traceback.join('\n'), /Cell\[\d+\]:3:/);
    const out = await sbx.runCode('console.log("hi"); display.html("<i>x</i>"); 5', { context: c });
    assert.equal(out.stdout, 'hi\n');
    assert.equal(out.results[0]?.html, '<i>x</i>');
    assert.equal(main(out)?.text, '5');
  });

  it('runs TypeScript (types erased) with error positions in the TypeScript source', async () => {
    const r = await sbx.runCode('interface P { x: number }\nconst p: P = { x: 21 };\nconst twice = (n: number): number => n * 2;\ntwice(p.x)', { language: 'typescript' });
    assert.equal(r.text, '42', JSON.stringify(r));
    const e = await sbx.runCode('type T = string;\nconst s: T = "a";\nfunction f(): never {\n  throw new Error("boom")\n}\nf()', { language: 'typescript' });
    assert.equal(e.error?.name, 'Error');
    assert.match(e.error!.traceback.join('\n'), /Cell\[\d+\]:4:/);
    const syntax = await sbx.runCode('const = 5', { language: 'typescript' });
    assert.equal(syntax.error?.name, 'SyntaxError');
  });

  it('keeps a bash shell: cd and exports persist, and a failing command is the error', async () => {
    const a = await sbx.runCode('cd /tmp && export GREETING=hello\npwd', { language: 'bash' });
    assert.equal(a.stdout, '/tmp\n');
    const b = await sbx.runCode('echo "$PWD $GREETING"', { language: 'bash' });
    assert.equal(b.stdout, '/tmp hello\n');
    assert.equal(b.error, undefined);
    const c = await sbx.runCode('ls /nonexistent', { language: 'bash' });
    assert.equal(c.error?.name, 'ExitCode');
    const i = await sbx.runCode('sleep 30; echo not-reached', { language: 'bash', timeoutMs: 500 });
    assert.equal(i.interrupted?.how, 'signal');
    assert.doesNotMatch(i.stdout, /not-reached/);
    assert.equal((await sbx.runCode('echo $GREETING', { language: 'bash' })).stdout, 'hello\n');
  });

  it('runs 1,000 small cells in a row and the context stays healthy', async () => {
    const c = await sbx.createCodeContext({ language: 'python' });
    await sbx.runCode('n = 0', { context: c });
    for (let i = 0; i < 1000; i++) {
      const r = await sbx.runCode('n += 1\nn', { context: c });
      assert.equal(r.text, String(i + 1));
    }
    const info = (await sbx.listCodeContexts()).find((x) => x.id === c.id);
    assert.equal(info?.restarts, 0);
    assert.equal(info?.executionCount, 1001);
    await sbx.removeCodeContext(c);
  });

  it('manages contexts: create, list, restart, remove; wrong ids and languages are client errors', async () => {
    const c = await sbx.createCodeContext({ language: 'python', cwd: '/tmp' });
    assert.equal((await sbx.runCode('import os; os.getcwd()', { context: c })).text, "'/tmp'");
    await sbx.runCode('y = 5', { context: c });
    const listed = await sbx.listCodeContexts();
    assert.ok(listed.some((x) => x.id === c.id && !x.default));
    assert.ok(listed.some((x) => x.default && x.language === 'python'));
    await sbx.restartCodeContext(c);
    assert.equal((await sbx.runCode('y', { context: c })).error?.name, 'NameError');
    const mismatch = await api(d.url, 'POST', `/v1/sandboxes/${sbx.id}/code`, { code: '1', context: c.id, language: 'bash' });
    assert.equal(mismatch.status, 400, mismatch.text);
    await sbx.removeCodeContext(c);
    const gone = await api(d.url, 'POST', `/v1/sandboxes/${sbx.id}/code`, { code: '1', context: c.id });
    assert.equal(gone.status, 404, gone.text);
    const bad = await api(d.url, 'POST', `/v1/sandboxes/${sbx.id}/code`, { code: '1', language: 'cobol' });
    assert.equal(bad.status, 400, bad.text);
  });

  it('streams NDJSON over REST: start, output, results, end', async () => {
    const res = await fetch(`${d.url}/v1/sandboxes/${sbx.id}/code`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...authHeaders(d.url) },
      body: JSON.stringify({ code: 'print("a")\nfrom IPython.display import display\ndisplay(1)\n2', stream: true }),
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /ndjson/);
    const events = (await res.text()).trim().split('\n').map((l) => JSON.parse(l) as { type: string; data?: string; result?: { text?: string } });
    assert.deepEqual(
      events.map((e) => e.type),
      ['start', 'stdout', 'result', 'result', 'end'],
    );
    assert.equal(events[1]!.data, 'a\n');
    assert.equal(events[2]!.result?.text, '1');
    assert.equal(events[3]!.result?.text, '2');
  });

  it('refuses code in a sandbox without the runtime: 422 unsupported, naming the python template', async () => {
    const bb = await Sandbox.create({ apiUrl: d.url, apiKey: d.adminKey, template: 'busybox' });
    try {
      const r = await api(d.url, 'POST', `/v1/sandboxes/${bb.id}/code`, { code: '1' });
      assert.equal(r.status, 422, r.text);
      assert.equal(r.json.error.code, 'unsupported');
      assert.match(r.json.error.message, /python template/);
    } finally {
      await bb.kill();
    }
  });

  it('capsule code prints the result, and --out writes the figure', async () => {
    const run = (args: string[]) =>
      new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
        const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, CAPSULE_URL: d.url, CAPSULE_API_KEY: d.adminKey ?? '' } });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
        child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
        child.on('close', (code) => resolve({ code, stdout, stderr }));
      });
    const r = await run(['code', sbx.id, '--', 'import math; math.factorial(20)']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '2432902008176640000\n');
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-code-out-'));
    try {
      const p = await run(['code', sbx.id, '--out', out, '--', 'import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])\nNone']);
      assert.equal(p.code, 0, p.stderr);
      const files = fs.readdirSync(out);
      assert.equal(files.length, 1, files.join(','));
      assert.ok(files[0]!.endsWith('.png'));
      const e = await run(['code', sbx.id, '--', '1/0']);
      assert.equal(e.code, 1);
      assert.match(e.stderr, /ZeroDivisionError/);
      const js = await run(['code', sbx.id, '--language', 'javascript', '--json', '--', '[1, 2].map((x) => x * 2)']);
      assert.equal(js.code, 0, js.stderr);
      assert.equal((JSON.parse(js.stdout) as Execution).results[0]?.text, '[ 2, 4 ]');
    } finally {
      fs.rmSync(out, { recursive: true, force: true });
    }
  });

  it('MCP run_code keeps state across calls and returns a plot as image content', async () => {
    const c = await connectClient('http', d);
    try {
      const first = await c.client.callTool('run_code', { sandbox_id: sbx.id, language: 'python', code: 'mcp_value = 6 * 7' });
      assert.notEqual(first.isError, true, JSON.stringify(first.content));
      const second = await c.client.callTool('run_code', { sandbox_id: sbx.id, language: 'python', code: 'mcp_value' });
      const s = second.structuredContent as { results: Array<{ text?: string; is_main_result: boolean }> };
      assert.equal(s.results[0]?.text, '42');
      const plot = await c.client.callTool('run_code', { sandbox_id: sbx.id, code: 'import matplotlib.pyplot as plt\nplt.plot([1, 2])\nNone' });
      const images = (plot.content as Array<{ type: string; mimeType?: string; data?: string }>).filter((x) => x.type === 'image');
      assert.equal(images.length, 1, JSON.stringify(plot.content).slice(0, 500));
      assert.equal(images[0]!.mimeType, 'image/png');
      assert.ok(pngSize(images[0]!.data!).width > 100);
      const err = await c.client.callTool('run_code', { sandbox_id: sbx.id, code: '1/0' });
      assert.notEqual(err.isError, true);
      assert.equal((err.structuredContent as { error?: { name: string } }).error?.name, 'ZeroDivisionError');
    } finally {
      await c.close();
    }
  });
});
