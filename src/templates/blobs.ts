/**
 * Uploaded archives for `copy` steps and image imports, stored by sha256 and
 * kept apart per owner: a digest someone else uploaded is not yours to use
 * (content addressing would otherwise tell a stranger that a file exists, and
 * hand it over). Layers made from them are shared on disk regardless: a layer
 * is invisible, only templates are named.
 *
 * On disk: <data>/blobs/<owner key>/<hex>.tar, written to a temp name while its
 * hash is checked, renamed when it matches. Blobs unused for a day are pruned;
 * a rebuild whose layer is still cached does not need its blob.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { InvalidArgumentError, NotFoundError, PayloadTooLargeError } from '../errors/index.js';

const DIGEST_RE = /^sha256:([0-9a-f]{64})$/;
/** Largest archive accepted (a copy step or an image). */
export const MAX_BLOB_BYTES = 4 * 1024 ** 3;
const RETAIN_MS = 24 * 3600_000;

export class BlobStore {
  constructor(private readonly root: string) {}

  private dir(owner: string): string {
    return path.join(this.root, createHash('sha256').update(owner).digest('hex').slice(0, 24));
  }

  private file(owner: string, digest: string): string {
    const m = DIGEST_RE.exec(digest);
    if (!m) throw new InvalidArgumentError(`not a sha256 digest: ${digest}`);
    return path.join(this.dir(owner), `${m[1]}.tar`);
  }

  has(owner: string, digest: string): boolean {
    return fs.existsSync(this.file(owner, digest));
  }

  /** The archive's bytes; NotFoundError when this owner never uploaded it (or it was pruned). */
  open(owner: string, digest: string): Readable {
    const f = this.file(owner, digest);
    if (!fs.existsSync(f)) throw new NotFoundError(`archive ${digest} was not uploaded (PUT /v1/blobs/${digest} first)`, { digest });
    // Touch it: used blobs are not pruned.
    const now = new Date();
    fs.utimesSync(f, now, now);
    return fs.createReadStream(f);
  }

  /** Store `data` as `digest`, refusing bytes whose sha256 differs. Returns the size. */
  async put(owner: string, digest: string, data: Readable, maxBytes = MAX_BLOB_BYTES): Promise<number> {
    const final = this.file(owner, digest);
    await fsp.mkdir(path.dirname(final), { recursive: true, mode: 0o700 });
    const tmp = `${final}.tmp-${randomBytes(6).toString('hex')}`;
    const hash = createHash('sha256');
    let size = 0;
    const count = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        size += chunk.length;
        if (size > maxBytes) {
          cb(new PayloadTooLargeError(`archive is larger than ${maxBytes} bytes`, { maxBytes }));
          return;
        }
        hash.update(chunk);
        cb(null, chunk);
      },
    });
    try {
      await pipeline(data, count, fs.createWriteStream(tmp, { mode: 0o600 }));
      const got = `sha256:${hash.digest('hex')}`;
      if (got !== digest) throw new InvalidArgumentError(`the uploaded bytes hash to ${got}, not ${digest}`, { expected: digest, got });
      await fsp.rename(tmp, final);
      return size;
    } catch (e) {
      await fsp.rm(tmp, { force: true });
      throw e;
    }
  }

  /** Remove blobs nobody used for a day, and temp files of cut-off uploads. */
  async prune(now = Date.now()): Promise<number> {
    let removed = 0;
    for (const owner of await fsp.readdir(this.root).catch(() => [] as string[])) {
      const d = path.join(this.root, owner);
      for (const f of await fsp.readdir(d).catch(() => [] as string[])) {
        const p = path.join(d, f);
        const st = await fsp.stat(p).catch(() => undefined);
        if (!st) continue;
        if (f.includes('.tmp-') ? now - st.mtimeMs > 3600_000 : now - st.mtimeMs > RETAIN_MS) {
          await fsp.rm(p, { force: true });
          removed++;
        }
      }
    }
    return removed;
  }
}
