/**
 * The `busybox` template: the smallest useful rootfs. One static binary
 * (Debian package busybox-static) plus a symlink per applet, a passwd/group
 * with `root` and `user` (1000), and the empty directories a container
 * runtime mounts onto. Building it is a copy of ~2 MB and a few hundred
 * symlinks: a few milliseconds.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { RuntimeError } from '../errors/index.js';
import type { BuildProgress, TemplateDefinition } from './types.js';

const execFileP = promisify(execFile);

export const DEFAULT_BUSYBOX_PATH = '/bin/busybox';

/** Directories every template has: [path, mode, uid]. */
const DIRS: Array<[string, number, number]> = [
  ['bin', 0o755, 0],
  ['sbin', 0o755, 0],
  ['usr', 0o755, 0],
  ['usr/bin', 0o755, 0],
  ['usr/sbin', 0o755, 0],
  ['etc', 0o755, 0],
  ['home', 0o755, 0],
  ['home/user', 0o755, 1000],
  ['root', 0o700, 0],
  ['tmp', 0o1777, 0],
  ['proc', 0o555, 0],
  ['sys', 0o555, 0],
  ['dev', 0o755, 0],
  ['run', 0o755, 0],
  ['var', 0o755, 0],
  ['var/tmp', 0o1777, 0],
  ['.capsule', 0o755, 0],
];

const FILES: Array<[string, string, number]> = [
  [
    'etc/passwd',
    'root:x:0:0:root:/root:/bin/sh\n' +
      'user:x:1000:1000:user:/home/user:/bin/sh\n' +
      'nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
    0o644,
  ],
  ['etc/group', 'root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n', 0o644],
  ['etc/hostname', 'capsule\n', 0o644],
  ['etc/hosts', '127.0.0.1\tlocalhost capsule\n::1\tlocalhost ip6-localhost ip6-loopback\n', 0o644],
  // Empty placeholders so the runtime can bind-mount its own over them.
  ['etc/resolv.conf', '', 0o644],
  ['etc/profile', 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n', 0o644],
];

/** True when the ELF file at `file` asks for a dynamic loader (has PT_INTERP). */
export async function isDynamicElf(file: string): Promise<boolean> {
  const fh = await fs.open(file, 'r');
  try {
    const head = Buffer.alloc(64);
    await fh.read(head, 0, 64, 0);
    if (head.readUInt32BE(0) !== 0x7f454c46) return false; // not ELF: nothing to say
    const is64 = head[4] === 2;
    const le = head[5] === 1;
    const u16 = (b: Buffer, o: number) => (le ? b.readUInt16LE(o) : b.readUInt16BE(o));
    const u32 = (b: Buffer, o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
    const phoff = is64 ? Number(le ? head.readBigUInt64LE(32) : head.readBigUInt64BE(32)) : u32(head, 28);
    const phentsize = u16(head, is64 ? 54 : 42);
    const phnum = u16(head, is64 ? 56 : 44);
    const table = Buffer.alloc(phentsize * phnum);
    await fh.read(table, 0, table.length, phoff);
    for (let i = 0; i < phnum; i++) if (u32(table, i * phentsize) === 3 /* PT_INTERP */) return true;
    return false;
  } finally {
    await fh.close();
  }
}

/** Applet paths relative to /, e.g. `bin/sh`, `usr/bin/env` (from `busybox --list-full`). */
async function listApplets(busybox: string): Promise<string[]> {
  try {
    const { stdout } = await execFileP(busybox, ['--list-full']);
    return stdout.split('\n').map((l) => l.trim().replace(/^\/+/, '')).filter(Boolean);
  } catch {
    // Builds without --list-full: every applet goes to bin/.
    const { stdout } = await execFileP(busybox, ['--list']);
    return stdout.split('\n').map((l) => l.trim()).filter(Boolean).map((n) => `bin/${n}`);
  }
}

export function createBusyboxTemplate(opts: { busyboxPath?: string } = {}): TemplateDefinition {
  const busybox = opts.busyboxPath ?? DEFAULT_BUSYBOX_PATH;
  return {
    name: 'busybox',
    description: 'Minimal rootfs: a static busybox with its applets (sh, ls, cat, wget, ...). Builds instantly.',
    async build(rootfsDir: string, onProgress: (p: BuildProgress) => void, signal?: AbortSignal): Promise<void> {
      signal?.throwIfAborted();
      try {
        await fs.access(busybox, fs.constants.X_OK);
      } catch {
        throw new RuntimeError(`${busybox} not found or not executable: install it with \`apt-get install busybox-static\``);
      }
      if (await isDynamicElf(busybox)) {
        throw new RuntimeError(
          `${busybox} is dynamically linked and would not run inside the template: install the static build with \`apt-get install busybox-static\``,
        );
      }
      onProgress({ phase: 'layout', fraction: 0.1 });
      for (const [dir, mode, uid] of DIRS) {
        const p = path.join(rootfsDir, dir);
        await fs.mkdir(p, { recursive: true });
        await fs.chmod(p, mode); // mkdir's mode is filtered by the umask; chmod is not
        if (uid !== 0) await fs.chown(p, uid, uid);
      }
      for (const [file, content, mode] of FILES) {
        await fs.writeFile(path.join(rootfsDir, file), content, { mode });
        await fs.chmod(path.join(rootfsDir, file), mode);
      }

      onProgress({ phase: 'copying busybox', fraction: 0.3 });
      await fs.copyFile(busybox, path.join(rootfsDir, 'bin/busybox'));
      await fs.chmod(path.join(rootfsDir, 'bin/busybox'), 0o755);

      onProgress({ phase: 'linking applets', fraction: 0.5 });
      const applets = await listApplets(busybox);
      const links = new Set<string>();
      for (const a of applets) {
        if (!a.includes('/')) continue; // `linuxrc`: only meaningful in an initramfs
        links.add(a);
        // Also a name in bin/ for each applet, so PATH=/bin alone finds everything.
        links.add(`bin/${path.basename(a)}`);
      }
      // The two paths most scripts hard-code.
      links.add('bin/sh');
      links.add('usr/bin/env');
      links.delete('bin/busybox');
      await Promise.all(
        [...links].map(async (rel) => {
          if (rel.includes('..')) return;
          const linkPath = path.join(rootfsDir, rel);
          await fs.mkdir(path.dirname(linkPath), { recursive: true });
          const target = path.relative(path.dirname('/' + rel), '/bin/busybox');
          try {
            await fs.symlink(target, linkPath);
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
          }
        }),
      );
      onProgress({ phase: 'done', fraction: 1, message: `${links.size} applets` });
    },
  };
}

export const busyboxTemplate: TemplateDefinition = createBusyboxTemplate();
