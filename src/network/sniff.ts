/**
 * The name a connection's first bytes claim: the server_name of a TLS
 * ClientHello (SNI) or the Host header of an HTTP/1 request. The gateway holds
 * a sandbox's first bytes until this says "done", so a domain rule is checked
 * against what the client actually asks the server for.
 *
 * Everything here reads bytes the sandbox wrote: each length is checked
 * against what is there, and a malformed or oversized start is "no name"
 * (then only the address rules apply), never an exception.
 */

/** At most this much is held back while looking for a name. */
export const SNIFF_LIMIT = 16 * 1024;

export type Sniff =
  /** More bytes are needed to decide. */
  | { done: false }
  /** `name` is undefined when the protocol carries none (or is neither TLS nor HTTP). */
  | { done: true; protocol: 'tls' | 'http' | 'other'; name?: string };

const HTTP_METHOD = /^(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|TRACE|CONNECT|PROPFIND|PROPPATCH|MKCOL|COPY|MOVE|LOCK|UNLOCK|REPORT) /;

export function sniff(buf: Buffer): Sniff {
  if (buf.length === 0) return { done: false };
  if (buf[0] === 0x16) return sniffTls(buf);
  const head = buf.subarray(0, 16).toString('latin1');
  if (/^[A-Z]{1,16}$/.test(head) && buf.length < 16) return { done: false };
  if (HTTP_METHOD.test(head)) return sniffHttp(buf);
  return { done: true, protocol: 'other' };
}

function sniffHttp(buf: Buffer): Sniff {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return buf.length >= SNIFF_LIMIT ? { done: true, protocol: 'http' } : { done: false };
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const target = lines[0]?.split(' ')[1] ?? '';
  for (const l of lines.slice(1)) {
    const m = /^host:\s*(.*?)\s*$/i.exec(l);
    if (m) return { done: true, protocol: 'http', name: hostOnly(m[1]!) };
  }
  // An absolute-form target (a proxy-style request) names the host too.
  const abs = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]+)/i.exec(target);
  return abs ? { done: true, protocol: 'http', name: hostOnly(abs[1]!.replace(/^.*@/, '')) } : { done: true, protocol: 'http' };
}

/** "example.com:8080" → "example.com"; "[::1]:80" → "::1". */
function hostOnly(h: string): string {
  if (h.startsWith('[')) return h.slice(1, h.indexOf(']') > 0 ? h.indexOf(']') : undefined);
  const i = h.lastIndexOf(':');
  return (i >= 0 && h.indexOf(':') === i ? h.slice(0, i) : h).toLowerCase();
}

/**
 * A ClientHello may span several TLS records: the handshake bytes are collected
 * from consecutive handshake records until the whole message is there.
 */
function sniffTls(buf: Buffer): Sniff {
  const hs: Buffer[] = [];
  let have = 0;
  let off = 0;
  let need = -1;
  while (off + 5 <= buf.length) {
    if (buf[off] !== 0x16) return { done: true, protocol: 'tls' };
    const len = buf.readUInt16BE(off + 3);
    if (off + 5 + len > buf.length) break;
    hs.push(buf.subarray(off + 5, off + 5 + len));
    have += len;
    off += 5 + len;
    if (need < 0 && have >= 4) {
      const h = Buffer.concat(hs);
      if (h[0] !== 0x01) return { done: true, protocol: 'tls' }; // not a ClientHello
      need = 4 + h.readUIntBE(1, 3);
    }
    if (need >= 0 && have >= need) return { done: true, protocol: 'tls', ...withName(parseClientHello(Buffer.concat(hs).subarray(4, need))) };
  }
  return buf.length >= SNIFF_LIMIT ? { done: true, protocol: 'tls' } : { done: false };
}

function withName(name: string | undefined): { name?: string } {
  return name === undefined ? {} : { name };
}

/** server_name (host_name) from a ClientHello body, or undefined. */
export function parseClientHello(b: Buffer): string | undefined {
  let p = 2 + 32; // client_version, random
  if (p + 1 > b.length) return undefined;
  p += 1 + b[p]!; // session_id
  if (p + 2 > b.length) return undefined;
  p += 2 + b.readUInt16BE(p); // cipher_suites
  if (p + 1 > b.length) return undefined;
  p += 1 + b[p]!; // compression_methods
  if (p + 2 > b.length) return undefined;
  const extEnd = Math.min(b.length, p + 2 + b.readUInt16BE(p));
  p += 2;
  while (p + 4 <= extEnd) {
    const type = b.readUInt16BE(p);
    const len = b.readUInt16BE(p + 2);
    p += 4;
    if (p + len > extEnd) return undefined;
    if (type === 0x0000) {
      // server_name_list: u16 length, then (u8 type, u16 length, name)*
      let q = p + 2;
      const end = Math.min(p + len, p + 2 + (len >= 2 ? b.readUInt16BE(p) : 0));
      while (q + 3 <= end) {
        const t = b[q]!;
        const n = b.readUInt16BE(q + 1);
        q += 3;
        if (q + n > end) return undefined;
        if (t === 0) {
          const name = b.subarray(q, q + n).toString('latin1');
          return /^[\x21-\x7e]+$/.test(name) ? name.toLowerCase() : undefined;
        }
        q += n;
      }
      return undefined;
    }
    p += len;
  }
  return undefined;
}
