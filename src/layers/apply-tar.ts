/**
 * Unpack a tar stream into a layer tree: the files of a `copy` step, or one
 * layer of an imported OCI image. The archive is hostile input: it comes from a
 * client or from an image nobody vetted.
 *
 * - Names are normalised and must stay inside the layer (no "..", no absolute
 *   escape); a name whose parent is a symlink made earlier by the same archive
 *   is refused, so an archive cannot write through a link it planted.
 * - Regular files, directories, symlinks (kept as they are: they resolve inside
 *   the sandbox) and hard links to files of the same archive. Device nodes,
 *   FIFOs and anything else are skipped and counted.
 * - OCI whiteouts become overlay whiteouts: `.wh.<name>` hides `<name>` of the
 *   layers below, `.wh..wh..opq` makes its directory opaque (capsule-layer).
 * - Owners are moved into the sandboxes' mapped range (archive id N -> base+N;
 *   ids past the range become the range's nobody), permission bits and
 *   setuid/setgid/sticky are kept (they mean nothing outside the sandbox's user
 *   namespace), mtimes are kept.
 * - Bounded: at most `maxEntries` entries and `maxBytes` of file data.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import tar from 'tar-stream';
import { InvalidArgumentError, PayloadTooLargeError } from '../errors/index.js';
import { markOpaque, makeWhiteouts } from './native.js';

export interface ApplyTarOptions {
  /** Host uid/gid of the sandbox's root (the mapped range's start). */
  idMapBase: number;
  /** Size of the mapped range; ids at or past it become base + NOBODY. */
  idMapSize: number;
  /** Where inside the layer the archive's root goes ("/" for image layers, the copy destination otherwise). */
  prefix?: string;
  /** Owner forced on every entry (container ids), e.g. for a copy step without --chown: root. */
  owner?: { uid: number; gid: number };
  /** Convert `.wh.` entries (image layers). Copy steps take such names literally. */
  whiteouts?: boolean;
  maxEntries?: number;
  maxBytes?: number;
  signal?: AbortSignal;
}

export interface ApplyTarResult {
  entries: number;
  bytes: number;
  skipped: number;
  whiteouts: number;
  opaques: number;
}

const NOBODY = 65534;
const WHITEOUT_PREFIX = '.wh.';
const OPAQUE_MARKER = '.wh..wh..opq';

/** "a/./b/" -> "a/b"; refuses "..", NUL and names that leave the root. */
export function safeRelative(name: string): string {
  if (name.includes('\0')) throw new InvalidArgumentError(`archive entry name contains NUL: ${JSON.stringify(name)}`);
  const parts: string[] = [];
  for (const p of name.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') throw new InvalidArgumentError(`archive entry escapes its root: ${JSON.stringify(name)}`);
    parts.push(p);
  }
  return parts.join('/');
}

export async function applyTar(source: Readable, layerDir: string, opts: ApplyTarOptions): Promise<ApplyTarResult> {
  const maxEntries = opts.maxEntries ?? 1_000_000;
  const maxBytes = opts.maxBytes ?? 64 * 1024 ** 3;
  const prefix = safeRelative(opts.prefix ?? '/');
  const result: ApplyTarResult = { entries: 0, bytes: 0, skipped: 0, whiteouts: 0, opaques: 0 };
  const hostId = (id: number): number => opts.idMapBase + (Number.isInteger(id) && id >= 0 && id < opts.idMapSize ? id : NOBODY);
  /** Paths (relative to the layer) the archive made as symlinks: nothing may be written below them. */
  const links = new Set<string>();
  const whiteouts: string[] = [];
  const opaques: string[] = [];
  /** Directories' modes and times, applied at the end (a read-only directory would refuse its children). */
  const dirMeta: Array<{ abs: string; mode: number; mtime: Date | undefined }> = [];

  const ensureParents = async (rel: string): Promise<void> => {
    const parts = rel.split('/');
    let cur = '';
    for (let i = 0; i < parts.length - 1; i++) {
      cur = cur ? `${cur}/${parts[i]}` : parts[i]!;
      if (links.has(cur)) throw new InvalidArgumentError(`archive entry ${JSON.stringify(rel)} is below a symlink of the same archive`);
      const abs = path.join(layerDir, cur);
      const st = await fsp.lstat(abs).catch(() => undefined);
      if (st?.isSymbolicLink()) throw new InvalidArgumentError(`archive entry ${JSON.stringify(rel)} is below a symlink`);
      if (!st) {
        await fsp.mkdir(abs, { mode: 0o755 });
        const owner = hostId(0);
        await fsp.lchown(abs, owner, owner);
      }
    }
  };

  const extract = tar.extract();
  extract.on('entry', (header, stream, next) => {
    // When the extraction fails, the entry in hand is destroyed with the same error: it is reported once, by pipeline.
    stream.on('error', () => undefined);
    const handle = async (): Promise<void> => {
      opts.signal?.throwIfAborted();
      if (++result.entries > maxEntries) throw new PayloadTooLargeError(`archive has more than ${maxEntries} entries`);
      const name = safeRelative(header.name);
      const base = path.posix.basename(name);
      const dirOf = path.posix.dirname(name) === '.' ? '' : path.posix.dirname(name);
      if (opts.whiteouts && base === OPAQUE_MARKER) {
        opaques.push(path.posix.join(prefix, dirOf));
        return;
      }
      if (opts.whiteouts && base.startsWith(WHITEOUT_PREFIX)) {
        whiteouts.push(path.posix.join(prefix, dirOf, base.slice(WHITEOUT_PREFIX.length)));
        return;
      }
      const rel = path.posix.join(prefix, name);
      if (rel === '' || rel === '.') {
        // The archive's root directory itself: its mode applies to the layer's root (or prefix).
        if (header.type === 'directory') dirMeta.push({ abs: layerDir, mode: (header.mode ?? 0o755) & 0o7777, mtime: header.mtime });
        return;
      }
      await ensureParents(rel);
      const abs = path.join(layerDir, rel);
      const uid = hostId(opts.owner?.uid ?? header.uid ?? 0);
      const gid = hostId(opts.owner?.gid ?? header.gid ?? 0);
      const mode = (header.mode ?? 0o644) & 0o7777;
      // A later entry replaces an earlier one of the same name (as tar does), but never through a symlink.
      const existing = await fsp.lstat(abs).catch(() => undefined);
      switch (header.type) {
        case 'directory': {
          if (existing && !existing.isDirectory()) await fsp.rm(abs, { force: true });
          if (!existing || !existing.isDirectory()) await fsp.mkdir(abs, { mode: 0o700 });
          await fsp.lchown(abs, uid, gid);
          dirMeta.push({ abs, mode, mtime: header.mtime });
          return;
        }
        case 'file':
        case 'contiguous-file': {
          if (existing) await fsp.rm(abs, { recursive: existing.isDirectory(), force: true });
          const size = header.size ?? 0;
          if (result.bytes + size > maxBytes) throw new PayloadTooLargeError(`archive holds more than ${maxBytes} bytes of files`);
          result.bytes += size;
          // O_EXCL with NOFOLLOW semantics: the name was just removed; a race would have to come from this process.
          await pipeline(stream, fs.createWriteStream(abs, { flags: 'wx', mode: 0o600 }));
          await fsp.lchown(abs, uid, gid);
          await fsp.chmod(abs, mode); // after chown, which clears setuid/setgid
          if (header.mtime) await fsp.utimes(abs, header.mtime, header.mtime);
          return;
        }
        case 'symlink': {
          if (existing) await fsp.rm(abs, { recursive: existing.isDirectory(), force: true });
          await fsp.symlink(header.linkname ?? '', abs);
          await fsp.lchown(abs, uid, gid);
          if (header.mtime) await fsp.lutimes(abs, header.mtime, header.mtime);
          links.add(rel);
          return;
        }
        case 'link': {
          const target = path.posix.join(prefix, safeRelative(header.linkname ?? ''));
          if (links.has(target)) throw new InvalidArgumentError(`hard link ${JSON.stringify(name)} to a symlink`);
          const targetAbs = path.join(layerDir, target);
          const st = await fsp.lstat(targetAbs).catch(() => undefined);
          if (!st || !st.isFile()) throw new InvalidArgumentError(`hard link ${JSON.stringify(name)} to ${JSON.stringify(header.linkname)}, which this archive did not make`);
          if (existing) await fsp.rm(abs, { recursive: existing.isDirectory(), force: true });
          await fsp.link(targetAbs, abs);
          return;
        }
        default:
          // Devices, FIFOs, sockets: no image or copy needs them, and a device node is a way out.
          result.skipped++;
          return;
      }
    };
    handle().then(
      () => {
        stream.resume(); // drain what a skipped entry did not read
        next();
      },
      (e: unknown) => {
        stream.resume();
        next(e as Error);
      },
    );
  });

  await pipeline(source, extract);
  // Deepest first, so a parent's mode never blocks the change of a child.
  for (const d of dirMeta.sort((a, b) => b.abs.split('/').length - a.abs.split('/').length)) {
    await fsp.chmod(d.abs, d.mode);
    if (d.mtime) await fsp.utimes(d.abs, d.mtime, d.mtime);
  }
  const owner = hostId(0);
  if (whiteouts.length) await makeWhiteouts(layerDir, owner, whiteouts);
  if (opaques.length) await markOpaque(layerDir, owner, opaques);
  result.whiteouts = whiteouts.length;
  result.opaques = opaques.length;
  return result;
}
