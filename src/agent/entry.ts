/** The directory entry codec shared by LIST and STAT (docs/agent-protocol.md, "Entry"). */
import { MAX_NAME_BYTES, MAX_TARGET_BYTES, PayloadReader, ProtocolError } from './frames.js';
import type { FileEntry, FileType } from './types.js';
import { readXattrBlock } from './xattr.js';

const FILE_TYPES: FileType[] = ['unknown', 'file', 'dir', 'symlink', 'fifo', 'socket', 'char', 'block'];
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

function decodeName(raw: Buffer): { name: string; nameBase64?: string } {
  try {
    return { name: utf8Strict.decode(raw) };
  } catch {
    return { name: raw.toString('utf8'), nameBase64: raw.toString('base64') };
  }
}

/**
 * One entry; a LIST entry's name must be a single path component, and its path is joined to the listed
 * directory. With `xattrPrefix` (the request asked for it) a metadata block follows the entry.
 */
export function readEntry(r: PayloadReader, parentOrPath: string, isList: boolean, xattrPrefix?: string): FileEntry {
  const typeNum = r.u8();
  const mode = r.u32();
  const size = r.u64();
  const mtimeMs = r.i64();
  const rawName = r.bytes(MAX_NAME_BYTES);
  const rawTarget = r.bytes(MAX_TARGET_BYTES);
  if (rawName.length === 0) throw new ProtocolError('entry with an empty name');
  if (isList && (rawName.includes(0x2f) || rawName.includes(0))) throw new ProtocolError('list entry name contains / or NUL');
  const type = FILE_TYPES[typeNum] ?? 'unknown';
  const { name, nameBase64 } = decodeName(rawName);
  const path = isList ? (parentOrPath.endsWith('/') ? parentOrPath + name : `${parentOrPath}/${name}`) : parentOrPath;
  const entry: FileEntry = { name, path, type, size, mode, mtimeMs };
  if (nameBase64 !== undefined) entry.nameBase64 = nameBase64;
  if (type === 'symlink') entry.symlinkTarget = rawTarget.toString('utf8');
  if (xattrPrefix !== undefined) {
    const { xattrs, partial } = readXattrBlock(r, Buffer.byteLength(xattrPrefix));
    entry.xattrs = xattrs;
    if (partial) entry.xattrsPartial = true;
  }
  return entry;
}
