/**
 * The `debian` template: Debian bookworm (minbase) with python3, built with
 * debootstrap. About 110 packages, ~260 MB on disk before the apt caches are
 * dropped; 35–75 s depending on the mirror.
 *
 * Build cache (CAPSULE_TEMPLATE_CACHE)
 * ------------------------------------
 * When the environment variable named by TEMPLATE_CACHE_ENV points at a
 * directory, a build first looks there for a rootfs made by an earlier run:
 *   <cache>/<name>-rootfs.tar   a tar made by us (numeric owners, host root), or
 *   <cache>/<name>-rootfs/      a ready rootfs directory,
 * and unpacks/copies it instead of running debootstrap. After a fresh
 * debootstrap the finished (not yet id-shifted) tree is saved there as
 * <name>-rootfs.tar, next to <name>-rootfs.json which records the recipe; a
 * cache whose recipe differs from this build's is ignored. This exists so
 * that test suites (and CI machines) pay for debootstrap once per machine,
 * not once per run. Unset, a daemon running as root uses the machine-wide
 * DEFAULT_TEMPLATE_CACHE, so a new data dir on the same machine does not run
 * debootstrap again; set it empty to use no cache.
 */
import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { RuntimeError } from '../errors/index.js';
import { exists } from './fsutil.js';
import { unmountBelow } from './fsutil.js';
import type { BuildProgress, TemplateDefinition } from './types.js';

const execFileP = promisify(execFile);

export const TEMPLATE_CACHE_ENV = 'CAPSULE_TEMPLATE_CACHE';
export const DEFAULT_DEBIAN_MIRROR = 'http://deb.debian.org/debian';
/** The machine-wide cache of debootstrapped trees (root only: it holds root-owned files). */
export const DEFAULT_TEMPLATE_CACHE = '/var/cache/capsule/templates';

/** The cache to use when the options name none: the variable, else the machine-wide one for root. */
function cacheFromEnv(): string | undefined {
  const v = process.env[TEMPLATE_CACHE_ENV];
  if (v !== undefined) return v || undefined;
  return process.getuid?.() === 0 ? DEFAULT_TEMPLATE_CACHE : undefined;
}

export interface DebianTemplateOptions {
  /** Template name (default debian); also the name of its cache files. */
  name?: string;
  description?: string;
  suite?: string;
  /** Mirror URL; default: the host's first `<suite> main` source, else deb.debian.org. */
  mirror?: string;
  /** Extra packages (debootstrap --include). Default: python3. */
  include?: string[];
  /** Cache directory; default: process.env[TEMPLATE_CACHE_ENV] at build time, else DEFAULT_TEMPLATE_CACHE for root; null: no cache. */
  cacheDir?: string | null;
  debootstrap?: string;
  /** Where apt sources are read from (tests). Default /etc/apt. */
  aptDir?: string;
  /** Give `user` passwordless sudo (/etc/sudoers.d), and let the sandboxes' setuid programs work. */
  sudo?: boolean;
  /** What the sandboxes get: default user, working directory, env. */
  config?: import('./types.js').BuiltinConfig;
  /**
   * A last step on the finished tree (host root, before it is cached), e.g. warming caches with
   * a chroot. `postInstallId` names it in the cache recipe: change it when the step changes.
   */
  postInstall?: (rootfsDir: string, signal?: AbortSignal) => Promise<void>;
  postInstallId?: string;
}

// ---------------------------------------------------------------------------
// Mirror discovery

interface AptSource {
  types: string[];
  uris: string[];
  suites: string[];
  components: string[];
}

/** One-line format: `deb [arch=amd64 signed-by=...] http://host/debian bookworm main contrib`. */
export function parseSourcesList(text: string): AptSource[] {
  const out: AptSource[] = [];
  for (const raw of text.split('\n')) {
    let line = raw.replace(/#.*$/, '').trim();
    if (!line) continue;
    line = line.replace(/\[[^\]]*\]/, ' ');
    const [type, uri, suite, ...components] = line.split(/\s+/);
    if (!type || !uri || !suite) continue;
    out.push({ types: [type], uris: [uri], suites: [suite], components });
  }
  return out;
}

/** deb822 format (`*.sources`): stanzas of `Key: value` separated by blank lines. */
export function parseDeb822(text: string): AptSource[] {
  const out: AptSource[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    let last: string | undefined;
    for (const raw of stanza.split('\n')) {
      if (/^\s*#/.test(raw)) continue;
      if (/^\s/.test(raw) && last) {
        fields.set(last, `${fields.get(last) ?? ''} ${raw.trim()}`);
        continue;
      }
      const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(raw);
      if (m) {
        last = m[1]!.toLowerCase();
        fields.set(last, m[2]!.trim());
      }
    }
    if ((fields.get('enabled') ?? 'yes').toLowerCase() === 'no') continue;
    const list = (k: string) => (fields.get(k) ?? '').split(/\s+/).filter(Boolean);
    if (list('uris').length === 0) continue;
    out.push({ types: list('types'), uris: list('uris'), suites: list('suites'), components: list('components') });
  }
  return out;
}

/** The first `deb` source for `<suite> main` on the host, else the Debian CDN. */
export async function findMirror(suite = 'bookworm', aptDir = '/etc/apt'): Promise<string> {
  const sources: AptSource[] = [];
  try {
    sources.push(...parseSourcesList(await fs.readFile(path.join(aptDir, 'sources.list'), 'utf8')));
  } catch {
    /* no sources.list */
  }
  let entries: string[] = [];
  try {
    entries = (await fs.readdir(path.join(aptDir, 'sources.list.d'))).sort();
  } catch {
    /* no sources.list.d */
  }
  for (const e of entries) {
    const file = path.join(aptDir, 'sources.list.d', e);
    try {
      if (e.endsWith('.list')) sources.push(...parseSourcesList(await fs.readFile(file, 'utf8')));
      else if (e.endsWith('.sources')) sources.push(...parseDeb822(await fs.readFile(file, 'utf8')));
    } catch {
      /* unreadable: skip */
    }
  }
  const mirrorOf = (s: AptSource) => s.uris.find((u) => /^(https?|file):/.test(u))?.replace(/\/+$/, '');
  const debs = sources.filter((s) => s.types.includes('deb') && s.components.includes('main'));
  for (const s of debs) {
    const uri = s.suites.includes(suite) ? mirrorOf(s) : undefined;
    if (uri) return uri;
  }
  // A host on bookworm names no trixie source, but its Debian mirror serves every release: take the
  // mirror of a plain release suite (not -security, -updates or -backports, which live elsewhere or
  // hold only a part of the archive) before falling back to the CDN.
  for (const s of debs) {
    const uri = s.suites.some((x) => /^[a-z]+$/.test(x)) ? mirrorOf(s) : undefined;
    if (uri) return uri;
  }
  return DEFAULT_DEBIAN_MIRROR;
}

// ---------------------------------------------------------------------------
// Progress from debootstrap's `I:` lines

/** Rough package count of minbase + python3 on bookworm (110 when measured); only used before the real count is known. */
const EXPECTED_PACKAGES = 110;
const METADATA = new Set(['InRelease', 'Release', 'Release.gpg', 'Packages']);

/**
 * Turns debootstrap's stdout into BuildProgress. Fractions: 0–5 % index and
 * dependency resolution, 5–35 % download, 35–50 % extraction, 50–72 %
 * unpacking, 72–95 % configuring. The fraction never goes backwards.
 */
export class DebootstrapProgressParser {
  private retrieved = new Set<string>();
  private counts = { extracting: new Set<string>(), unpacking: new Set<string>(), configuring: new Set<string>() };
  private fraction = 0;
  private phase = '';

  constructor(private readonly emit: (p: BuildProgress) => void) {}

  private total(): number {
    return Math.max(this.retrieved.size, 1);
  }

  private report(phase: string, fraction: number, message?: string): void {
    this.fraction = Math.max(this.fraction, Math.min(fraction, 0.99));
    this.phase = phase;
    this.emit({ phase, fraction: this.fraction, ...(message ? { message } : {}) });
  }

  line(raw: string): void {
    const line = raw.trim();
    const m = /^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) (\S+)/.exec(line);
    if (m) {
      const [, verb, pkg] = m as unknown as [string, string, string];
      if (METADATA.has(pkg)) return this.report('resolving', 0.02, `${verb.toLowerCase()} ${pkg}`);
      switch (verb) {
        case 'Retrieving':
          this.retrieved.add(pkg);
          return this.report('downloading', 0.05 + 0.3 * Math.min(this.retrieved.size / EXPECTED_PACKAGES, 1), pkg);
        case 'Validating':
          return; // one per Retrieving line: nothing new to say
        case 'Extracting':
          this.counts.extracting.add(pkg);
          // Only the "required" subset is extracted (~80 % of all packages).
          return this.report('extracting', 0.35 + 0.15 * Math.min(this.counts.extracting.size / (this.total() * 0.8), 1), pkg);
        case 'Unpacking':
          if (pkg === 'the') return this.report('unpacking', 0.5); // "Unpacking the base system..."
          this.counts.unpacking.add(pkg);
          return this.report('unpacking', 0.5 + 0.22 * Math.min(this.counts.unpacking.size / this.total(), 1), pkg);
        case 'Configuring':
          if (pkg === 'the') return this.report('configuring', 0.72);
          this.counts.configuring.add(pkg);
          return this.report('configuring', 0.72 + 0.23 * Math.min(this.counts.configuring.size / this.total(), 1), pkg);
      }
    }
    if (/^I: (Checking Release|Valid Release|Resolving|Checking component|Found)/.test(line)) {
      return this.report('resolving', 0.03);
    }
    if (line.startsWith('I: Installing core packages')) return this.report('unpacking', 0.5);
    if (line.startsWith('I: Base system installed successfully')) return this.report('configuring', 0.95);
    if (line.startsWith('W: ')) return this.report(this.phase || 'resolving', this.fraction, line);
  }
}

// ---------------------------------------------------------------------------
// Running debootstrap

/** Keeps the last `maxLines` lines (each cut to 500 chars) of a process's output. */
class Tail {
  private lines: string[] = [];
  constructor(private readonly maxLines = 40) {}
  push(line: string): void {
    this.lines.push(line.length > 500 ? `${line.slice(0, 500)}...` : line);
    if (this.lines.length > this.maxLines) this.lines.shift();
  }
  toString(): string {
    return this.lines.join('\n');
  }
}

function splitLines(onLine: (l: string) => void): (chunk: Buffer) => void {
  let rest = '';
  return (chunk) => {
    rest += chunk.toString('utf8');
    let i: number;
    while ((i = rest.indexOf('\n')) >= 0) {
      onLine(rest.slice(0, i));
      rest = rest.slice(i + 1);
    }
    if (rest.length > 64 * 1024) rest = rest.slice(-4096); // a runaway line: keep memory bounded
  };
}

async function readLogTail(file: string, bytes = 3000): Promise<string> {
  try {
    const text = await fs.readFile(file, 'utf8');
    return text.slice(-bytes).trim();
  } catch {
    return '';
  }
}

async function runDebootstrap(
  bin: string,
  args: string[],
  target: string,
  onProgress: (p: BuildProgress) => void,
  signal?: AbortSignal,
): Promise<void> {
  signal?.throwIfAborted();
  const parser = new DebootstrapProgressParser(onProgress);
  const tail = new Tail();
  const child = spawn(bin, args, {
    // Own process group, so an abort can kill debootstrap and everything it started (wget, dpkg, chroot).
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      PATH: `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
      LC_ALL: 'C',
      DEBIAN_FRONTEND: 'noninteractive',
    },
  });
  child.stdout.on('data', splitLines((l) => {
    tail.push(l);
    parser.line(l);
  }));
  child.stderr.on('data', splitLines((l) => tail.push(l)));

  let killTimer: NodeJS.Timeout | undefined;
  const onAbort = (): void => {
    if (child.pid === undefined) return;
    try {
      process.kill(-child.pid, 'SIGTERM');
    } catch {
      /* already gone */
    }
    killTimer = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }, 5000);
    killTimer.unref();
  };
  signal?.addEventListener('abort', onAbort, { once: true });

  try {
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (c, sig) => resolve(c ?? (sig ? -1 : null)));
    }).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') {
        throw new RuntimeError(`${bin} not found: install it with \`apt-get install debootstrap\``);
      }
      throw e;
    });
    if (signal?.aborted) {
      // A killed debootstrap can leave /proc and /sys mounted in the target.
      await unmountBelow(target).catch(() => undefined);
      throw signal.reason ?? new Error('aborted');
    }
    if (code !== 0) {
      await unmountBelow(target).catch(() => undefined);
      const log = await readLogTail(path.join(target, 'debootstrap', 'debootstrap.log'));
      throw new RuntimeError(
        `debootstrap failed (exit ${code}). Check that the mirror ${args[args.length - 1]} is reachable ` +
          `(set it in /etc/apt/sources.list or pass a mirror), that there is disk space, and that the daemon runs as root.\n` +
          `--- last output ---\n${tail.toString()}` +
          (log ? `\n--- debootstrap.log (tail) ---\n${log}` : ''),
        { exitCode: code },
      );
    }
  } finally {
    signal?.removeEventListener('abort', onAbort);
    if (killTimer) clearTimeout(killTimer);
  }
}

// ---------------------------------------------------------------------------
// Post-processing

async function appendLine(file: string, prefix: string, line: string): Promise<void> {
  let text = '';
  try {
    text = await fs.readFile(file, 'utf8');
  } catch {
    /* created below */
  }
  if (text.split('\n').some((l) => l.startsWith(prefix))) return;
  if (text && !text.endsWith('\n')) text += '\n';
  const st = await fs.stat(file).catch(() => undefined);
  await fs.writeFile(file, `${text}${line}\n`);
  if (st) await fs.chmod(file, st.mode & 0o7777);
}

/** Add `user` (1000:1000, /home/user, bash) the way useradd would, without a chroot. */
async function addUser(root: string): Promise<void> {
  const days = Math.floor(Date.now() / 86_400_000);
  await appendLine(path.join(root, 'etc/passwd'), 'user:', 'user:x:1000:1000:user:/home/user:/bin/bash');
  await appendLine(path.join(root, 'etc/group'), 'user:', 'user:x:1000:');
  await appendLine(path.join(root, 'etc/shadow'), 'user:', `user:!:${days}:0:99999:7:::`);
  await appendLine(path.join(root, 'etc/gshadow'), 'user:', 'user:!::');
  const home = path.join(root, 'home/user');
  await fs.mkdir(home, { recursive: true });
  await fs.chmod(home, 0o755);
  const skel = path.join(root, 'etc/skel');
  for (const f of await fs.readdir(skel).catch(() => [] as string[])) {
    await fs.cp(path.join(skel, f), path.join(home, f), { recursive: true, verbatimSymlinks: true });
  }
  await execFileP('chown', ['-R', '-h', '1000:1000', home]);
}

async function finish(root: string, sudo: boolean): Promise<void> {
  await addUser(root);
  if (sudo) {
    const dir = path.join(root, 'etc/sudoers.d');
    await fs.mkdir(dir, { recursive: true });
    await fs.writeFile(path.join(dir, 'capsule-user'), 'user ALL=(ALL:ALL) NOPASSWD: ALL\n', { mode: 0o440 });
    await fs.chmod(path.join(dir, 'capsule-user'), 0o440);
  }
  await fs.mkdir(path.join(root, '.capsule'), { recursive: true });
  await fs.chmod(path.join(root, '.capsule'), 0o755);
  // A sandbox is disposable: `pip install` may go next to Debian's packages (to ~/.local for `user`) instead of
  // refusing with PEP 668's "externally-managed-environment", as it does on a Debian host.
  for (const dir of await fs.readdir(path.join(root, 'usr/lib')).catch(() => [] as string[])) {
    if (/^python3\.\d+$/.test(dir)) await fs.rm(path.join(root, 'usr/lib', dir, 'EXTERNALLY-MANAGED'), { force: true });
  }
  // debootstrap copies the build host's name and resolver; neither belongs in a template.
  await fs.writeFile(path.join(root, 'etc/hostname'), 'capsule\n');
  await fs.writeFile(path.join(root, 'etc/resolv.conf'), '');
  // Drop downloaded packages and indexes (~90 MB): `apt-get update` restores the lists.
  const archives = path.join(root, 'var/cache/apt/archives');
  for (const f of await fs.readdir(archives).catch(() => [] as string[])) {
    if (f.endsWith('.deb')) await fs.rm(path.join(archives, f), { force: true });
  }
  const aptCache = path.join(root, 'var/cache/apt');
  for (const f of await fs.readdir(aptCache).catch(() => [] as string[])) {
    if (f.endsWith('.bin')) await fs.rm(path.join(aptCache, f), { force: true });
  }
  const lists = path.join(root, 'var/lib/apt/lists');
  for (const f of await fs.readdir(lists).catch(() => [] as string[])) {
    if (f !== 'partial' && f !== 'lock') await fs.rm(path.join(lists, f), { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------
// Cache

interface Recipe {
  name: string;
  sudo: boolean;
  suite: string;
  variant: string;
  include: string[];
  /** Bumped when finish() changes what ends up in the tree (2: no PEP 668 marker). */
  version: number;
  /** The template's own last step (DebianTemplateOptions.postInstallId), when it has one. */
  postInstall?: string;
}

async function cacheMatches(cacheDir: string, recipe: Recipe): Promise<boolean> {
  try {
    const saved = JSON.parse(await fs.readFile(path.join(cacheDir, `${recipe.name}-rootfs.json`), 'utf8')) as Partial<Recipe>;
    return JSON.stringify({ ...recipe }) === JSON.stringify({ name: saved.name ?? 'debian', sudo: saved.sudo ?? false, suite: saved.suite, variant: saved.variant, include: saved.include, version: saved.version, ...(saved.postInstall !== undefined ? { postInstall: saved.postInstall } : {}) });
  } catch {
    return true; // no recipe file: a tar or directory placed there by hand; trust it
  }
}

/** The cache's copy of this recipe's tree, as a tar or a directory; null when there is none usable. */
async function cachedCopy(cacheDir: string, recipe: Recipe): Promise<{ tar: string } | { dir: string } | null> {
  if (!(await cacheMatches(cacheDir, recipe))) return null;
  const tar = path.join(cacheDir, `${recipe.name}-rootfs.tar`);
  if (await exists(tar)) return { tar };
  const dir = path.join(cacheDir, `${recipe.name}-rootfs`);
  return (await exists(path.join(dir, 'usr/bin'))) ? { dir } : null;
}

/** Fill `target` from the cache; false when there is nothing usable. */
async function restoreFromCache(cacheDir: string, target: string, recipe: Recipe, onProgress: (p: BuildProgress) => void): Promise<boolean> {
  const copy = await cachedCopy(cacheDir, recipe);
  if (!copy) return false;
  if ('tar' in copy) {
    onProgress({ phase: 'restoring from cache', fraction: 0.1, message: copy.tar });
    await execFileP('tar', ['--numeric-owner', '-xpf', copy.tar, '-C', target], { maxBuffer: 16 * 1024 * 1024 });
  } else {
    onProgress({ phase: 'restoring from cache', fraction: 0.1, message: copy.dir });
    await execFileP('cp', ['-a', '--reflink=auto', `${copy.dir}/.`, target], { maxBuffer: 16 * 1024 * 1024 });
  }
  return exists(path.join(target, 'usr/bin/python3'));
}

async function saveToCache(cacheDir: string, source: string, recipe: Recipe): Promise<void> {
  await fs.mkdir(cacheDir, { recursive: true });
  const tmp = path.join(cacheDir, `.${recipe.name}-rootfs.tar.tmp-${process.pid}-${Date.now()}`);
  try {
    await execFileP('tar', ['--numeric-owner', '-cpf', tmp, '-C', source, '.'], { maxBuffer: 16 * 1024 * 1024 });
    await fs.rename(tmp, path.join(cacheDir, `${recipe.name}-rootfs.tar`));
    await fs.writeFile(path.join(cacheDir, `${recipe.name}-rootfs.json`), JSON.stringify({ ...recipe, savedAt: new Date().toISOString() }, null, 2));
  } finally {
    await fs.rm(tmp, { force: true });
  }
}

// ---------------------------------------------------------------------------

export function createDebianTemplate(opts: DebianTemplateOptions = {}): TemplateDefinition {
  const suite = opts.suite ?? 'bookworm';
  const include = opts.include ?? ['python3'];
  const name = opts.name ?? 'debian';
  const sudo = opts.sudo === true;
  const recipe: Recipe = { name, sudo, suite, variant: 'minbase', include, version: 2, ...(opts.postInstall ? { postInstall: opts.postInstallId ?? 'unnamed' } : {}) };
  // Read when used: tests and the prebuild script set CAPSULE_TEMPLATE_CACHE after this module loads.
  const cacheDirOf = (): string | undefined => (opts.cacheDir === undefined ? cacheFromEnv() : opts.cacheDir || undefined);
  return {
    name,
    description: opts.description ?? `Debian ${suite} (minbase) with ${include.join(', ')}; first build runs debootstrap (~1 min, ~260 MB)`,
    ...(opts.config ? { config: opts.config } : {}),
    async build(rootfsDir: string, onProgress: (p: BuildProgress) => void, signal?: AbortSignal): Promise<void> {
      signal?.throwIfAborted();
      if (process.getuid?.() !== 0) {
        throw new RuntimeError('building the debian template needs root (debootstrap creates device nodes and chroots): run the daemon as root');
      }
      const cacheDir = cacheDirOf();
      if (cacheDir && (await restoreFromCache(cacheDir, rootfsDir, recipe, onProgress).catch(() => false))) {
        onProgress({ phase: 'restored from cache', fraction: 0.95 });
        return;
      }
      if (cacheDir) {
        // A failed restore may have left a partial tree behind.
        for (const e of await fs.readdir(rootfsDir)) await fs.rm(path.join(rootfsDir, e), { recursive: true, force: true });
      }
      const mirror = opts.mirror ?? (await findMirror(suite, opts.aptDir));
      onProgress({ phase: 'resolving', fraction: 0, message: mirror });
      const args = ['--variant=minbase', ...(include.length ? [`--include=${include.join(',')}`] : []), suite, rootfsDir, mirror];
      await runDebootstrap(opts.debootstrap ?? 'debootstrap', args, rootfsDir, onProgress, signal);
      signal?.throwIfAborted();
      onProgress({ phase: 'finishing', fraction: 0.96 });
      await finish(rootfsDir, sudo);
      if (opts.postInstall) {
        onProgress({ phase: 'post-install', fraction: 0.965 });
        await opts.postInstall(rootfsDir, signal);
        signal?.throwIfAborted();
      }
      if (include.includes('python3') && !(await exists(path.join(rootfsDir, 'usr/bin/python3')))) {
        throw new RuntimeError('debootstrap finished but usr/bin/python3 is missing from the tree; check the mirror and rebuild with --force');
      }
      if (cacheDir) {
        onProgress({ phase: 'saving to cache', fraction: 0.97, message: cacheDir });
        // A cache that cannot be written is not a reason to fail the build.
        await saveToCache(cacheDir, rootfsDir, recipe).catch(() => undefined);
      }
    },
    async cached(): Promise<boolean> {
      const cacheDir = cacheDirOf();
      return cacheDir !== undefined && (await cachedCopy(cacheDir, recipe)) !== null;
    },
  };
}

export const debianTemplate: TemplateDefinition = createDebianTemplate();

/**
 * `debian-trixie` (also `debian:trixie`): Debian 13 minbase with python3, from the host's mirror.
 * Built on first use like `debian` (debootstrap took 39 s here); user templates may start from it.
 */
export const debianTrixieTemplate: TemplateDefinition = createDebianTemplate({ name: 'debian-trixie', suite: 'trixie' });

/**
 * Packages of the `base` template: what an agent's code usually reaches for (E2B's base has the same set),
 * with pip and venv, since `pip install` is the first thing most agents run once they have a network.
 */
export const BASE_PACKAGES = ['bash', 'coreutils', 'python3', 'python-is-python3', 'python3-pip', 'python3-venv', 'git', 'curl', 'ca-certificates', 'sudo', 'procps'];

/**
 * `base`: debian with the usual tools and a user `user` (1000, /home/user)
 * with passwordless sudo, who runs the sandboxes' commands by default.
 */
export const baseTemplate: TemplateDefinition = createDebianTemplate({
  name: 'base',
  include: BASE_PACKAGES,
  sudo: true,
  description: `Debian bookworm with ${BASE_PACKAGES.filter((p) => p !== 'python-is-python3').join(', ')}; user "user" (uid 1000) with passwordless sudo runs commands in /home/user`,
  config: { user: 'user', workdir: '/home/user', sudo: true },
});
