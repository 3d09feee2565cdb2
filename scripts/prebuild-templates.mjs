#!/usr/bin/env node
/**
 * Builds the debootstrapped built-in templates into CAPSULE_TEMPLATE_CACHE before the test suite runs, so
 * that no test's own time limit has to cover a first build (python takes minutes; a changed recipe
 * rebuilds it once per machine). With the cache warm it costs a restore of each (seconds).
 *
 * It runs `capsule serve --prebuild` on a throw-away data dir and stops it once it listens (the daemon
 * listens after its prebuilds). Never fails the run: a template that could not be built here is built
 * again by the first test that needs it, which then says why.
 *
 *   node scripts/prebuild-templates.mjs debian,base,python
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const names = process.argv[2] ?? 'debian,base,python';
const cache = process.env.CAPSULE_TEMPLATE_CACHE;
if (!cache) {
  console.error('prebuild-templates: CAPSULE_TEMPLATE_CACHE is not set; nothing to do');
  process.exit(0);
}
// Only what the cache lacks, or holds from another recipe: a warm cache costs nothing.
const { BUILTIN_TEMPLATES } = await import(path.join(root, 'dist', 'src', 'templates', 'index.js'));
async function uncached(list) {
  const out = [];
  for (const n of list) {
    const def = BUILTIN_TEMPLATES.find((t) => t.name === n);
    if (!def) console.error(`prebuild-templates: no built-in template ${n}`);
    else if (!(await def.cached?.())) out.push(n);
  }
  return out;
}
const stale = await uncached(names.split(','));
if (stale.length === 0) process.exit(0);
console.error(`prebuild-templates: building ${stale.join(', ')} into ${cache} (minutes the first time on a machine)`);
// The sandboxes' mapped uid must be able to traverse the data dir (os.tmpdir() is /tmp here).
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-prebuild-'));
fs.chmodSync(dataDir, 0o755);
const t0 = Date.now();
const child = spawn(process.execPath, [path.join(root, 'bin', 'capsule.js'), 'serve', '--host', '127.0.0.1', '--port', '0', '--data-dir', dataDir, '--prebuild', stale.join(',')], {
  stdio: ['ignore', 'pipe', 'pipe'],
  env: { ...process.env, CAPSULE_POOL: '' },
});
let log = '';
child.stderr.setEncoding('utf8');
child.stderr.on('data', (d) => (log = (log + d).slice(-20_000)));
const listening = await new Promise((resolve) => {
  let out = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d) => {
    out += d;
    if (/listening on http:\/\//.test(out)) resolve(true);
  });
  child.once('exit', () => resolve(false));
});
if (listening) {
  child.kill('SIGTERM');
  await new Promise((r) => child.once('exit', r));
}
fs.rmSync(dataDir, { recursive: true, force: true });
const missing = await uncached(stale);
const took = ((Date.now() - t0) / 1000).toFixed(1);
if (!listening || missing.length > 0) {
  console.error(`prebuild-templates: not cached after ${took} s: ${missing.join(', ') || stale.join(', ')}; the tests that need them will build them. Daemon log:\n${log.slice(-4000)}`);
} else {
  console.error(`prebuild-templates: ${stale.join(', ')} ready in ${cache} (${took} s)`);
}
