/**
 * The `python` built-in template: `base` plus what the code interpreter runs
 * (src/interpreter): IPython and ipykernel with the scientific stack from
 * Debian's packages, and Node.js with Debian's acorn and TypeScript for the
 * JavaScript/TypeScript contexts.
 *
 * It is a debootstrapped tree (cached machine-wide like debian and base)
 * because template builds cannot run apt steps until sandboxes get egress;
 * once they can, this becomes a code-defined template (`Template.from('base').apt(...)`).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { RuntimeError } from '../errors/index.js';
import { BASE_PACKAGES, createDebianTemplate } from './debian.js';
import type { TemplateDefinition } from './types.js';

const execFileP = promisify(execFile);

/** What the interpreter drivers import, plus the libraries an agent's analysis code reaches for first. */
export const PYTHON_PACKAGES = [
  ...BASE_PACKAGES,
  'python3-ipykernel',
  'python3-jupyter-client',
  'python3-ipython',
  'python3-matplotlib-inline',
  'python3-numpy',
  'python3-pandas',
  'python3-matplotlib',
  'python3-scipy',
  'nodejs',
  'node-acorn',
  'node-typescript',
  // debootstrap does not resolve virtual packages: their providers, named.
  'python3-cffi-backend',
  'libboost-regex1.74.0',
];

/**
 * matplotlib builds its font list on first import (1-3 s here); doing it at build time for `user` and
 * root makes the first plot of every sandbox as fast as the next one.
 */
async function warmCaches(root: string, signal?: AbortSignal): Promise<void> {
  const script = 'import matplotlib; matplotlib.use("agg"); import matplotlib.pyplot as plt; plt.figure(); import pandas, IPython';
  for (const [spec, home] of [['0:0', '/root'], ['1000:1000', '/home/user']] as const) {
    try {
      await execFileP('chroot', [`--userspec=${spec}`, root, '/usr/bin/env', '-i', `HOME=${home}`, 'PATH=/usr/bin:/bin', 'python3', '-c', script], {
        timeout: 180_000,
        ...(signal ? { signal } : {}),
      });
    } catch (e) {
      const err = e as { stderr?: string; message?: string };
      throw new RuntimeError(`warming the python template's caches failed: ${(err.stderr || err.message || String(e)).slice(-2000)}`);
    }
  }
}

export const pythonTemplate: TemplateDefinition = createDebianTemplate({
  name: 'python',
  include: PYTHON_PACKAGES,
  sudo: true,
  description:
    'base plus IPython/ipykernel, numpy, pandas, matplotlib, scipy and Node.js (with acorn and TypeScript) for the code interpreter; user "user" with passwordless sudo',
  config: { user: 'user', workdir: '/home/user', sudo: true },
  postInstall: warmCaches,
  postInstallId: 'mpl-font-cache-1',
});
