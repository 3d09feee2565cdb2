/**
 * A third-party client: the MCP Inspector's CLI mode drives `capsule mcp`
 * over stdio and calls run_code. bash (and python3) are not in busybox, so
 * this runs in a debian sandbox made through the REST API first (from the
 * test template cache when there is one). The Inspector needs Node 22, which
 * npx fetches; when it cannot, the test is skipped with the reason, loudly.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import os from 'node:os';
import { after, before, test } from 'node:test';
import { CLI, api, removeDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { startMcpDaemon } from './fixture.js';

const INSPECTOR = '@modelcontextprotocol/inspector@0.21.2';

function npx(args: string[], env: Record<string, string>, timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('npx', ['-y', '-p', 'node@22', '-p', INSPECTOR, '-c', args.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ')], {
      cwd: os.tmpdir(),
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env, npm_config_update_notifier: 'false' },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => { clearTimeout(timer); resolve({ code: -1, stdout, stderr: `${stderr}\n${e.message}` }); });
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

let d: TestDaemon | undefined;
let sandboxId: string | undefined;
let unavailable: string | undefined;

before(async () => {
  const probe = await npx(['mcp-inspector', '--help'], {}, 180_000);
  if (probe.code !== 0) {
    unavailable = `npx could not run ${INSPECTOR} with node@22 (exit ${probe.code}): ${probe.stderr.trim().split('\n').slice(-3).join(' | ')}`;
    return;
  }
  d = await startMcpDaemon();
  const r = await api(d.url, 'POST', '/v1/sandboxes', { template: 'debian', metadata: { suite: 'mcp-inspector' } });
  assert.equal(r.status, 201, `creating a debian sandbox: ${r.text}`);
  sandboxId = r.json.id as string;
});
after(async () => {
  if (d && sandboxId) await api(d.url, 'DELETE', `/v1/sandboxes/${sandboxId}`).catch(() => undefined);
  await d?.stop();
  if (d) await removeDataDir(d.dataDir);
});

async function inspectRunCode(language: string, code: string): Promise<{ structuredContent: { stdout: string; results: Array<{ text?: string }>; error?: unknown }; isError?: boolean }> {
  const env = { CAPSULE_URL: d!.url, CAPSULE_API_KEY: d!.adminKey ?? '' };
  const r = await npx(
    [
      'mcp-inspector',
      '--cli',
      ...Object.entries(env).flatMap(([k, v]) => ['-e', `${k}=${v}`]),
      process.execPath,
      CLI,
      'mcp',
      '--method',
      'tools/call',
      '--tool-name',
      'run_code',
      '--tool-arg',
      `sandbox_id=${sandboxId}`,
      `language=${language}`,
      `code=${code}`,
    ],
    {},
    120_000,
  );
  assert.equal(r.code, 0, `inspector failed:\n${r.stderr}\n${r.stdout}`);
  // The CLI prints the JSON result of the call.
  const start = r.stdout.indexOf('{');
  return JSON.parse(r.stdout.slice(start)) as { structuredContent: { stdout: string; results: Array<{ text?: string }>; error?: unknown }; isError?: boolean };
}

test('MCP Inspector CLI calls run_code over stdio', { timeout: 300_000 }, async (t) => {
  if (unavailable) {
    process.stderr.write(`\n*** SKIPPED: MCP Inspector check not run: ${unavailable}\n\n`);
    t.skip(unavailable);
    return;
  }
  const bash = await inspectRunCode('bash', 'echo 42');
  assert.notEqual(bash.isError, true);
  assert.equal(bash.structuredContent.error, undefined);
  assert.equal(bash.structuredContent.stdout, '42\n');

  // debian has python3 without IPython: the plain driver, still stateful, text results.
  const py = await inspectRunCode('python', '6 * 7');
  assert.equal(py.structuredContent.results[0]?.text, '42');
});
