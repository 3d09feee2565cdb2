/**
 * Extended attributes on the wire (1.3, feature `xattr`; docs/agent-protocol.md, "Extended attributes").
 * The bounds mirror agent/xattr.h; what comes back is checked against them again, since the attributes
 * were read from the sandbox's files, which its own processes may have set to anything.
 */
import { InvalidArgumentError } from '../errors/index.js';
import { PayloadReader, PayloadWriter, ProtocolError } from './frames.js';
import type { XattrSet } from './types.js';

export const XATTR_LIMITS = {
  /** Attributes per file. */
  maxCount: 128,
  /** A full attribute name, prefix included (the kernel's XATTR_NAME_MAX). */
  maxName: 255,
  /** Per file: full names plus values. */
  maxTotal: 4096,
  maxPrefix: 64,
} as const;

const utf8Strict = new TextDecoder('utf-8', { fatal: true });

export function checkXattrPrefix(prefix: string): void {
  const n = Buffer.byteLength(prefix);
  if (!prefix.startsWith('user.') || n > XATTR_LIMITS.maxPrefix || prefix.includes('\0')) {
    throw new InvalidArgumentError(`attribute prefix must start with user. and have at most ${XATTR_LIMITS.maxPrefix} bytes`);
  }
}

/** WRITE's optional tail: bytes prefix, u32 count, count x (bytes key, bytes value). Checked here before anything is sent. */
export function encodeXattrSet(w: PayloadWriter, set: XattrSet): PayloadWriter {
  checkXattrPrefix(set.prefix);
  if (set.entries.length > XATTR_LIMITS.maxCount) throw new InvalidArgumentError(`at most ${XATTR_LIMITS.maxCount} attributes per file`);
  const plen = Buffer.byteLength(set.prefix);
  let total = 0;
  w.bytes(set.prefix).u32(set.entries.length);
  for (const [k, v] of set.entries) {
    const kl = Buffer.byteLength(k);
    if (kl === 0 || k.includes('\0') || plen + kl > XATTR_LIMITS.maxName) throw new InvalidArgumentError(`bad attribute name ${JSON.stringify(k.slice(0, 64))}`);
    total += plen + kl + Buffer.byteLength(v);
    if (total > XATTR_LIMITS.maxTotal) throw new InvalidArgumentError(`attributes over ${XATTR_LIMITS.maxTotal} bytes per file`);
    w.bytes(k).bytes(v);
  }
  return w;
}

/** The metadata block after an entry: u8 flags (bit0 partial), u32 count, count x (bytes key, bytes value). */
export function readXattrBlock(r: PayloadReader, prefixBytes: number): { xattrs: Record<string, string>; partial: boolean } {
  let partial = (r.u8() & 1) !== 0;
  const count = r.u32();
  if (count > XATTR_LIMITS.maxCount) throw new ProtocolError(`entry with ${count} attributes`);
  const xattrs: Record<string, string> = Object.create(null) as Record<string, string>;
  let total = 0;
  for (let i = 0; i < count; i++) {
    const k = r.bytes(XATTR_LIMITS.maxName);
    const v = r.bytes(XATTR_LIMITS.maxTotal);
    total += prefixBytes + k.length + v.length;
    if (k.length === 0 || prefixBytes + k.length > XATTR_LIMITS.maxName || total > XATTR_LIMITS.maxTotal) {
      throw new ProtocolError('entry attributes beyond the bounds');
    }
    let key: string;
    let value: string;
    try {
      key = utf8Strict.decode(k);
      value = utf8Strict.decode(v);
    } catch {
      partial = true;
      continue;
    }
    if (key.includes('\0') || key in xattrs) {
      partial = true;
      continue;
    }
    xattrs[key] = value;
  }
  return { xattrs: { ...xattrs }, partial };
}
