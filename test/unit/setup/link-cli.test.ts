/**
 * `capsule` on PATH after setup: scripts/link-cli.sh (run by scripts/setup.sh as root
 * with /usr/local/bin) against a temporary bin dir, then `capsule --version` resolved
 * through PATH the way a shell or an MCP client resolves "command": "capsule".
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT } from '../../helpers/serve.js';

const SCRIPT = path.join(REPO_ROOT, 'scripts', 'link-cli.sh');
const TARGET = path.join(fs.realpathSync(REPO_ROOT), 'bin', 'capsule.js');
const VERSION = (JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;

function link(binDir: string) {
  const r = spawnSync('bash', [SCRIPT, binDir], { encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

describe('linking the CLI onto PATH', () => {
  let tmp: string;
  let bin: string;
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-link-'));
    bin = path.join(tmp, 'bin');
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('links a missing capsule, and `capsule --version` then runs from PATH', () => {
    const r = link(bin);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /linked .*capsule -> .*bin\/capsule\.js \(capsule is on PATH\)/);
    assert.equal(fs.readlinkSync(path.join(bin, 'capsule')), TARGET);
    const v = spawnSync('capsule', ['--version'], { encoding: 'utf8', env: { ...process.env, PATH: `${bin}:${process.env.PATH}` }, timeout: 30_000 });
    assert.equal(v.status, 0, v.stderr);
    assert.equal(v.stdout.trim(), VERSION);
  });

  it('is idempotent', () => {
    const r = link(bin);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /already points to this checkout/);
  });

  it('replaces a link whose checkout is gone', () => {
    fs.rmSync(path.join(bin, 'capsule'));
    fs.symlinkSync('/nonexistent/capsule-checkout/bin/capsule.js', path.join(bin, 'capsule'));
    const r = link(bin);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /which is gone; relinking/);
    assert.equal(fs.readlinkSync(path.join(bin, 'capsule')), TARGET);
  });

  it('keeps a link to another checkout that exists, and a regular file, saying so', () => {
    const other = path.join(tmp, 'other-capsule.js');
    fs.writeFileSync(other, '#!/bin/sh\n', { mode: 0o755 });
    fs.rmSync(path.join(bin, 'capsule'));
    fs.symlinkSync(other, path.join(bin, 'capsule'));
    let r = link(bin);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /keeping .* -> .*other-capsule\.js \(another checkout\); to use this one: ln -sfn/);
    assert.equal(fs.readlinkSync(path.join(bin, 'capsule')), other);
    fs.rmSync(path.join(bin, 'capsule'));
    fs.writeFileSync(path.join(bin, 'capsule'), '#!/bin/sh\n', { mode: 0o755 });
    r = link(bin);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /keeping .*capsule \(not a link made by setup\)/);
  });

  it('says what to do when it cannot write the directory', () => {
    const file = path.join(tmp, 'a-file');
    fs.writeFileSync(file, '');
    const r = link(path.join(file, 'bin'));
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /cannot write .*; run as root, or add .*\/bin to PATH/);
  });

  it('setup runs it for /usr/local/bin as root', () => {
    const setup = fs.readFileSync(path.join(REPO_ROOT, 'scripts', 'setup.sh'), 'utf8');
    assert.match(setup, /bash scripts\/link-cli\.sh \/usr\/local\/bin/);
  });
});
