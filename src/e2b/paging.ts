/** E2B's list query details: the metadata filter's encoding and opaque page tokens. */
import { InvalidArgumentError } from '../errors/index.js';

/**
 * `metadata=user%3Dabc%26app%3Dprod` as E2B's SDK sends it: key=value pairs joined like a query
 * string, each key and value URL-encoded once more before that.
 */
export function parseMetadataQuery(q: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!q) return out;
  for (const [k, v] of new URLSearchParams(q)) {
    try {
      out[decodeURIComponent(k)] = decodeURIComponent(v);
    } catch {
      throw new InvalidArgumentError(`metadata filter ${JSON.stringify(k)} is not URL-encoded properly`);
    }
  }
  return out;
}

/** A page token: where the previous page ended (start time and id; ties broken by id). */
export function encodeCursor(rec: { createdAt: number; id: string }): string {
  return Buffer.from(JSON.stringify([rec.createdAt, rec.id])).toString('base64url');
}

export function decodeCursor(token: string): { createdAt: number; id: string } {
  try {
    const v = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as unknown;
    if (Array.isArray(v) && typeof v[0] === 'number' && typeof v[1] === 'string') return { createdAt: v[0], id: v[1] };
  } catch {
    // fall through
  }
  throw new InvalidArgumentError('nextToken is not a token this server gave out');
}

/**
 * One page of a list in E2B's way: sorted by start time and id (newest first, or oldest with `asc`),
 * `limit` items after the token's position, and the token for the next page when there is one.
 */
export function pageOf<T extends { createdAt: number; id: string }>(
  items: readonly T[],
  opts: { asc?: boolean | undefined; limit: number; nextToken?: string | undefined },
): { page: T[]; next: string | undefined } {
  const dir = opts.asc === true ? 1 : -1;
  const cmp = (a: { createdAt: number; id: string }, b: { createdAt: number; id: string }) => dir * (a.createdAt - b.createdAt || a.id.localeCompare(b.id));
  const all = [...items].sort(cmp);
  const after = opts.nextToken !== undefined ? decodeCursor(opts.nextToken) : undefined;
  const start = after === undefined ? 0 : all.findIndex((r) => cmp(r, after) > 0);
  const from = start < 0 ? all.length : start;
  const page = all.slice(from, from + opts.limit);
  const last = page[page.length - 1];
  return { page, next: last && from + opts.limit < all.length ? encodeCursor(last) : undefined };
}
