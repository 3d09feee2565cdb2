#!/usr/bin/env node
/**
 * Builds the in-sandbox agent (agent/*.c) into dist/agent/capsule-agent as a
 * static binary. Rebuilds only when the output is missing or older than any
 * source or header. Prefers musl-gcc (small static binaries), falls back to
 * gcc -static.
 *
 *   node scripts/build-agent.mjs [--force]
 *   node scripts/build-agent.mjs --out FILE [-DNAME=VALUE ...]
 *
 * The second form builds a variant from the same sources with some of
 * agent/protocol.h's macros overridden (PROTO_MAJOR, PROTO_MINOR,
 * AGENT_FEATURES, AGENT_VERSION), always: the upgrade tests use it to make
 * agents of an older minor or another major version.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const srcDir = path.join(root, 'agent');
const outDir = path.join(root, 'dist', 'agent');
const args = process.argv.slice(2);
const outArg = args.indexOf('--out');
const defines = args.filter((a) => /^-D[A-Z_][A-Z0-9_]*(=.*)?$/.test(a));
const unknown = args.filter((a, i) => a !== '--force' && a !== '--out' && (outArg < 0 || i !== outArg + 1) && !defines.includes(a));
if (unknown.length || (outArg >= 0 && !args[outArg + 1])) {
  console.error(`build-agent: bad arguments ${unknown.join(' ')}\nusage: node scripts/build-agent.mjs [--force] | --out FILE [-DNAME=VALUE ...]`);
  process.exit(2);
}
const out = outArg >= 0 ? path.resolve(args[outArg + 1]) : path.join(outDir, 'capsule-agent');
const force = args.includes('--force') || outArg >= 0;

const files = fs.readdirSync(srcDir).filter((f) => f.endsWith('.c') || f.endsWith('.h'));
const sources = files.filter((f) => f.endsWith('.c')).map((f) => path.join(srcDir, f));
if (sources.length === 0) {
  console.error('build-agent: no C sources in agent/');
  process.exit(1);
}

function mtime(p) {
  try { return fs.statSync(p).mtimeMs; } catch { return -1; }
}
const newestSource = Math.max(...files.map((f) => mtime(path.join(srcDir, f))), mtime(fileURLToPath(import.meta.url)));
if (!force && mtime(out) >= newestSource) {
  console.log(`build-agent: ${path.relative(root, out)} is up to date`);
  process.exit(0);
}

fs.mkdirSync(path.dirname(out), { recursive: true });
const flags = ['-static', '-O2', '-Wall', '-Wextra', '-std=gnu11', ...defines, '-o', `${out}.tmp`, ...sources];
const compilers = ['musl-gcc', 'gcc'];
const failures = [];
for (const cc of compilers) {
  const r = spawnSync(cc, flags, { stdio: ['ignore', 'inherit', 'pipe'], encoding: 'utf8' });
  if (r.error) { failures.push(`${cc}: ${r.error.code === 'ENOENT' ? 'not installed' : r.error.message}`); continue; }
  if (r.stderr) process.stderr.write(r.stderr);
  if (r.status !== 0) { failures.push(`${cc}: exited with ${r.status}`); continue; }
  spawnSync('strip', [`${out}.tmp`], { stdio: 'ignore' });
  fs.renameSync(`${out}.tmp`, out);
  fs.chmodSync(out, 0o755);
  console.log(`build-agent: built ${path.relative(root, out)} with ${cc}`);
  process.exit(0);
}
try { fs.rmSync(`${out}.tmp`, { force: true }); } catch { /* ignore */ }
console.error(`build-agent: could not compile the agent (${failures.join('; ')}).\n` +
  'A C compiler with static libc is needed: apt-get install musl-tools (or gcc with libc6-dev).');
process.exit(1);
