/**
 * The disks and the initramfs a microVM boots with:
 *
 * - the template image: the sandbox's layers merged into one read-only ext4
 *   (`mkfs.ext4 -d`), made once per set of layers and kept in
 *   `<data>/microvm/images/<key>.ext4`. The layers are stored owned by the
 *   container id range (id N is host id idMapBase+N); a VM has no user
 *   namespace, so the copy made for the image is shifted back (N again).
 * - the sandbox's own disk: a sparse ext4 of `diskMb` (the writable layer,
 *   and its quota), made per sandbox.
 * - the initramfs: the agent as /init (`--vm-init`), the kernel modules the
 *   guest needs that the kernel does not have built in, and /dev/console.
 *   One per agent binary and module set, cached in `<data>/microvm/`.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { RuntimeError } from '../../errors/index.js';
import { runTool } from '../overlay.js';

/** Kernel modules the guest init loads, in dependency order (those built into the kernel are simply absent). */
export const GUEST_MODULES = ['virtio_ring', 'virtio', 'virtio_mmio', 'virtio_blk', 'virtio_console', 'overlay', 'failover', 'net_failover', 'virtio_net'] as const;

/** The modules a guest needs for its network device (gateway mode): the backend offers `gateway` only with them. */
export const NET_MODULES = ['failover', 'net_failover', 'virtio_net'] as const;

const NOBODY = 65534;
const SPECIAL_BITS = 0o6000;

/** A key for a set of layers: their identities (dev, inode, change time) and the id base. */
export async function imageKey(layersTopFirst: readonly string[], idMapBase: number): Promise<string> {
  const h = createHash('sha256');
  h.update(`v1 ${idMapBase}\n`);
  for (const l of layersTopFirst) {
    const st = await fsp.stat(l);
    h.update(`${l} ${st.dev}:${st.ino}:${st.ctimeMs}\n`);
  }
  return h.digest('hex').slice(0, 24);
}

/**
 * The read-only template image for these layers (topmost first), made when missing. Returns its path.
 * Layers are merged through a read-only overlay mount (whiteouts and opaque dirs applied by the kernel),
 * copied, shifted back to guest ids, and written into a fresh ext4 by mkfs.ext4 -d.
 */
export async function templateImage(
  imagesDir: string,
  layersTopFirst: readonly string[],
  ids: { base: number; size: number },
  /** Builds under way, by key (the driver's own): two creates from a new template wait for one build. */
  building: Map<string, Promise<string>>,
): Promise<string> {
  const key = await imageKey(layersTopFirst, ids.base);
  const out = path.join(imagesDir, `${key}.ext4`);
  if (fs.existsSync(out)) return out;
  let p = building.get(key);
  if (!p) {
    p = buildImage(imagesDir, out, layersTopFirst, ids).finally(() => building.delete(key));
    building.set(key, p);
  }
  return p;
}

/** Not abortable: an aborted create leaves the build to finish for the next one (it is a cache). */
async function buildImage(imagesDir: string, out: string, layersTopFirst: readonly string[], ids: { base: number; size: number }): Promise<string> {
  await fsp.mkdir(imagesDir, { recursive: true, mode: 0o700 });
  const work = await fsp.mkdtemp(path.join(imagesDir, '.build-'));
  const merged = path.join(work, 'merged');
  const tree = path.join(work, 'tree');
  let mounted = false;
  try {
    let source = layersTopFirst[0]!;
    if (layersTopFirst.length > 1) {
      await fsp.mkdir(merged);
      // A read-only overlay of lower layers only (needs two or more; one layer is copied as is).
      await tool('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${layersTopFirst.join(':')}`, merged], 'mount the layers');
      mounted = true;
      source = merged;
    }
    await tool('cp', ['-a', '--no-preserve=context', `${source}/.`, tree], 'copy the layers');
    if (mounted) {
      await tool('umount', [merged], 'unmount the layers');
      mounted = false;
    }
    const { entries, bytes } = await unshift(tree, ids.base, ids.size);
    // Room for ext4's metadata and a margin: the image is read-only, so it only needs to hold the tree.
    const sizeMb = Math.ceil((bytes * 1.15) / 2 ** 20) + 32 + Math.ceil(entries / 2000);
    const tmp = `${out}.tmp-${process.pid}`;
    await fsp.rm(tmp, { force: true });
    await tool(
      'mkfs.ext4',
      ['-q', '-F', '-d', tree, '-m', '0', '-N', String(entries + 1024), '-O', '^has_journal', '-L', 'capsule-lower', '-E', 'lazy_itable_init=1', tmp, `${sizeMb}M`],
      'make the template image (e2fsprogs)',
    );
    await fsp.chmod(tmp, 0o600);
    await fsp.rename(tmp, out);
    return out;
  } finally {
    if (mounted) await tool('umount', ['-l', merged], 'unmount the layers').catch(() => undefined);
    await fsp.rm(work, { recursive: true, force: true });
  }
}

async function tool(cmd: string, args: string[], what: string): Promise<void> {
  const r = await runTool(cmd, args, 10 * 60_000, `${cmd} is needed to ${what}`);
  if (r.code !== 0) throw new RuntimeError(`could not ${what}: ${cmd} exited with ${r.code ?? r.signal}: ${r.stderr.trim().split('\n').slice(-2).join(' ')}`);
}

/** Shift a tree's owners from host ids (base+N) back to guest ids (N); ids outside the range become nobody. */
async function unshift(dir: string, base: number, size: number): Promise<{ entries: number; bytes: number }> {
  let entries = 0;
  let bytes = 0;
  const back = (id: number) => (id >= base && id < base + size ? id - base : NOBODY);
  const visit = async (p: string): Promise<void> => {
    const st = await fsp.lstat(p);
    entries++;
    bytes += st.blocks * 512 + 4096;
    const uid = back(st.uid);
    const gid = back(st.gid);
    if (uid !== st.uid || gid !== st.gid) {
      await fsp.lchown(p, uid, gid);
      if (st.mode & SPECIAL_BITS && !st.isSymbolicLink()) await fsp.chmod(p, st.mode & 0o7777);
    }
    if (st.isDirectory()) {
      const names = await fsp.readdir(p);
      for (let i = 0; i < names.length; i += 32) await Promise.all(names.slice(i, i + 32).map((n) => visit(path.join(p, n))));
    }
  };
  await visit(dir);
  return { entries, bytes };
}

/** A sparse ext4 of diskMb for the sandbox's writable layer. */
export async function makeWritableDisk(file: string, diskMb: number): Promise<void> {
  const fh = await fsp.open(file, 'wx', 0o600);
  try {
    await fh.truncate(diskMb * 2 ** 20);
  } finally {
    await fh.close();
  }
  await tool('mkfs.ext4', ['-q', '-F', '-m', '0', '-L', 'capsule-rw', '-E', 'lazy_itable_init=1,lazy_journal_init=1', file], 'make the sandbox disk (e2fsprogs)');
}

// --- initramfs (newc cpio) -----------------------------------------------------------

interface CpioEntry {
  name: string;
  mode: number;
  data?: Buffer;
  rdev?: [number, number];
}

function cpio(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const pad = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const hex = (n: number) => n.toString(16).padStart(8, '0');
  for (const e of [...entries, { name: 'TRAILER!!!', mode: 0 }] as CpioEntry[]) {
    const data = e.data ?? Buffer.alloc(0);
    const name = Buffer.from(`${e.name}\0`);
    const [maj, min] = e.rdev ?? [0, 0];
    const header =
      '070701' +
      [ino++, e.mode, 0, 0, 1, 0, data.length, 0, 0, maj, min, name.length, 0].map(hex).join('');
    const h = Buffer.concat([Buffer.from(header, 'ascii'), name]);
    parts.push(h, pad(h.length), data, pad(data.length));
  }
  return Buffer.concat(parts);
}

/** The modules of GUEST_MODULES present in modulesDir (a dir of `<name>.ko`), in load order. */
export function guestModules(modulesDir: string | null): string[] {
  if (!modulesDir) return [];
  return GUEST_MODULES.filter((m) => fs.existsSync(path.join(modulesDir, `${m}.ko`)));
}

/** The initramfs for this agent and module set, made when missing; returns its path. */
export async function initramfs(cacheDir: string, agentBinary: string, modulesDir: string | null): Promise<string> {
  const agent = await fsp.readFile(agentBinary);
  const mods = guestModules(modulesDir);
  const h = createHash('sha256').update(agent);
  const modData = await Promise.all(mods.map((m) => fsp.readFile(path.join(modulesDir!, `${m}.ko`))));
  for (const d of modData) h.update(d);
  const out = path.join(cacheDir, `initrd-${h.digest('hex').slice(0, 16)}.cpio`);
  if (fs.existsSync(out)) return out;
  const dir = (name: string): CpioEntry => ({ name, mode: 0o40755 });
  const entries: CpioEntry[] = [
    dir('dev'),
    { name: 'dev/console', mode: 0o20600, rdev: [5, 1] },
    dir('proc'),
    dir('sys'),
    dir('mnt'),
    dir('newroot'),
    dir('modules'),
    { name: 'init', mode: 0o100755, data: agent },
    { name: 'modules/order', mode: 0o100644, data: Buffer.from(mods.map((m) => `${m}.ko\n`).join('')) },
    ...mods.map((m, i) => ({ name: `modules/${m}.ko`, mode: 0o100644, data: modData[i]! })),
  ];
  await fsp.mkdir(cacheDir, { recursive: true, mode: 0o700 });
  // A tmp name of its own per call: two creates on a fresh daemon build it at once (each renames its own copy
  // over the same content; with one shared tmp name the second rename failed with ENOENT, a 500).
  const tmp = `${out}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  await fsp.writeFile(tmp, cpio(entries), { mode: 0o600 });
  await fsp.rename(tmp, out);
  return out;
}
