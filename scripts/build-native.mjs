#!/usr/bin/env node
/**
 * Builds the daemon's host-side helpers: every native/<name>.c becomes
 * dist/native/<name>. These run on the host as root (never inside a sandbox),
 * for the few syscalls Node cannot make (mount, loop devices, seccomp export).
 *
 * A source may say how it wants to be built in a comment near its top:
 *   capsule-build: cc=gcc libs=-lseccomp
 * Default: static musl-gcc, falling back to gcc. Rebuilds only stale outputs.
 *
 *   node scripts/build-native.mjs [--force]
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const srcDir = path.join(root, 'native');
const outDir = path.join(root, 'dist', 'native');
const force = process.argv.includes('--force');

function mtime(p) {
  try { return fs.statSync(p).mtimeMs; } catch { return -1; }
}

const sources = fs.existsSync(srcDir) ? fs.readdirSync(srcDir).filter((f) => f.endsWith('.c')) : [];
const headers = fs.existsSync(srcDir) ? fs.readdirSync(srcDir).filter((f) => f.endsWith('.h')) : [];
const headerTime = Math.max(-1, mtime(fileURLToPath(import.meta.url)), ...headers.map((h) => mtime(path.join(srcDir, h))));
fs.mkdirSync(outDir, { recursive: true });

let failed = false;
for (const file of sources) {
  const src = path.join(srcDir, file);
  const out = path.join(outDir, file.slice(0, -2));
  if (!force && mtime(out) >= Math.max(mtime(src), headerTime)) continue;
  const text = fs.readFileSync(src, 'utf8').slice(0, 4000);
  const m = text.match(/capsule-build:([^\n*]*)/);
  const opts = Object.fromEntries((m?.[1] ?? '').trim().split(/\s+/).filter(Boolean).map((kv) => kv.split('=')));
  const compilers = opts.cc ? [opts.cc] : ['musl-gcc', 'gcc'];
  const libs = opts.libs ? opts.libs.split(',') : [];
  const isStatic = opts.static !== 'no' && !opts.libs;
  const flags = [...(isStatic ? ['-static'] : []), '-O2', '-Wall', '-Wextra', '-std=gnu11', '-I', srcDir, '-o', `${out}.tmp`, src, ...libs];
  const errors = [];
  let built = false;
  for (const cc of compilers) {
    const r = spawnSync(cc, flags, { stdio: ['ignore', 'inherit', 'pipe'], encoding: 'utf8' });
    if (r.error) { errors.push(`${cc}: ${r.error.code === 'ENOENT' ? 'not installed' : r.error.message}`); continue; }
    if (r.stderr) process.stderr.write(r.stderr);
    if (r.status !== 0) { errors.push(`${cc}: exited with ${r.status}`); continue; }
    spawnSync('strip', [`${out}.tmp`], { stdio: 'ignore' });
    fs.renameSync(`${out}.tmp`, out);
    fs.chmodSync(out, 0o755);
    console.log(`build-native: built ${path.relative(root, out)} with ${cc}`);
    built = true;
    break;
  }
  if (!built) {
    fs.rmSync(`${out}.tmp`, { force: true });
    console.error(`build-native: could not compile ${file} (${errors.join('; ')}); apt-get install musl-tools gcc libseccomp-dev`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
