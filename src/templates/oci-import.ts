/**
 * Import an OCI image as a template: a `docker save` / `podman save` tarball
 * or a tar of an OCI image layout directory. No registry is reached: the image
 * comes as an archive.
 *
 * The archive is unpacked (names checked, size bounded) into a scratch dir;
 * the image's manifest says which layer archives to apply, in order, and its
 * config gives the env, working directory, user and entrypoint/cmd that the
 * template's sandboxes get. Each image layer becomes a layer in the store,
 * keyed by its uncompressed content digest (an image layer is a diff: its
 * meaning does not depend on what is under it), with the image's whiteouts and
 * opaque directories turned into overlay ones.
 *
 * Both shapes are read: docker's (manifest.json listing Config and Layers by
 * path) and OCI's (index.json -> manifest -> config and layers in
 * blobs/sha256/, gzip-compressed or not). zstd layers are refused.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { z } from 'zod';
import { InvalidArgumentError, UnsupportedError } from '../errors/index.js';
import { applyTar } from '../layers/apply-tar.js';
import { layerDigest, type LayerStore } from '../layers/store.js';
import type { TemplateConfig } from '../schemas/templates.js';
import type { BuildReporter } from './builder.js';

const DockerManifest = z.array(z.object({ Config: z.string(), Layers: z.array(z.string()), RepoTags: z.array(z.string()).nullish() })).min(1);
const OciIndex = z.object({ manifests: z.array(z.object({ digest: z.string(), mediaType: z.string().optional() })).min(1) });
const OciManifest = z.object({
  config: z.object({ digest: z.string() }),
  layers: z.array(z.object({ digest: z.string(), mediaType: z.string() })),
});
const ImageConfig = z.object({
  config: z
    .object({
      Env: z.array(z.string()).nullish(),
      WorkingDir: z.string().nullish(),
      User: z.string().nullish(),
      Entrypoint: z.array(z.string()).nullish(),
      Cmd: z.array(z.string()).nullish(),
    })
    .nullish(),
  rootfs: z.object({ diff_ids: z.array(z.string()) }).optional(),
});

export interface ImportDeps {
  layers: LayerStore;
  idMapBase: number;
  idMapSize: number;
}

export interface ImportResult {
  /** Layer digests, lowest first. */
  layers: string[];
  config: TemplateConfig;
  /** The image's own name when the archive says (docker RepoTags). */
  reference: string | undefined;
}

const BLOB_RE = /^sha256:([0-9a-f]{64})$/;

/** Unpack the outer archive (image files only: regular files and directories) into `dir`. */
async function unpackOuter(archive: Readable, dir: string, maxBytes: number): Promise<void> {
  const tar = (await import('tar-stream')).default;
  const extract = tar.extract();
  let total = 0;
  extract.on('entry', (header, stream, next) => {
    stream.on('error', () => undefined);
    const run = async (): Promise<void> => {
      const parts = header.name.split('/').filter((p) => p !== '' && p !== '.');
      if (parts.some((p) => p === '..') || parts.length === 0) {
        stream.resume();
        return;
      }
      const abs = path.join(dir, ...parts);
      if (header.type === 'directory') {
        await fsp.mkdir(abs, { recursive: true });
        stream.resume();
        return;
      }
      if (header.type !== 'file' && header.type !== 'contiguous-file') {
        stream.resume(); // symlinks in an image archive are for repository tags: not needed
        return;
      }
      total += header.size ?? 0;
      if (total > maxBytes) throw new InvalidArgumentError(`image archive holds more than ${maxBytes} bytes`);
      await fsp.mkdir(path.dirname(abs), { recursive: true });
      await pipeline(stream, fs.createWriteStream(abs, { flags: 'wx', mode: 0o600 }));
    };
    run().then(
      () => next(),
      (e: unknown) => {
        stream.resume();
        next(e as Error);
      },
    );
  });
  await pipeline(archive, extract);
}

async function readJson<T>(file: string, schema: z.ZodType<T>, what: string): Promise<T> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch {
    throw new InvalidArgumentError(`the image archive has no ${what} (${path.basename(file)}): is it a docker save tarball or an OCI image layout?`);
  }
  const parsed = schema.safeParse(JSON.parse(text));
  if (!parsed.success) throw new InvalidArgumentError(`the image's ${what} is not what an OCI image has: ${parsed.error.issues[0]?.message ?? ''}`);
  return parsed.data;
}

/** A file inside the unpacked archive, by a name the image gives (never outside the scratch dir). */
function inside(dir: string, rel: string): string {
  const p = path.resolve(dir, rel);
  if (!p.startsWith(`${dir}/`)) throw new InvalidArgumentError(`the image names a file outside itself: ${rel}`);
  return p;
}

function blobPath(dir: string, digest: string): string {
  const m = BLOB_RE.exec(digest);
  if (!m) throw new InvalidArgumentError(`unsupported digest ${digest} (only sha256)`);
  return inside(dir, `blobs/sha256/${m[1]}`);
}

/** Where the layer archives and the config are, for either archive shape. */
async function locate(dir: string): Promise<{ config: string; layers: Array<{ file: string; gzip: boolean }>; reference: string | undefined }> {
  if (fs.existsSync(path.join(dir, 'manifest.json'))) {
    const m = (await readJson(path.join(dir, 'manifest.json'), DockerManifest, 'manifest'))[0]!;
    const layers = [];
    for (const l of m.Layers) {
      const file = inside(dir, l);
      layers.push({ file, gzip: await isGzip(file) });
    }
    return { config: inside(dir, m.Config), layers, reference: m.RepoTags?.[0] };
  }
  const index = await readJson(path.join(dir, 'index.json'), OciIndex, 'index');
  const manifest = await readJson(blobPath(dir, index.manifests[0]!.digest), OciManifest, 'manifest');
  const layers = manifest.layers.map((l) => {
    if (/zstd/.test(l.mediaType)) throw new UnsupportedError(`layer ${l.digest} is zstd-compressed, which this daemon does not read; save the image with gzip or uncompressed layers`);
    return { file: blobPath(dir, l.digest), gzip: /gzip/.test(l.mediaType) };
  });
  return { config: blobPath(dir, manifest.config.digest), layers, reference: undefined };
}

async function isGzip(file: string): Promise<boolean> {
  const fh = await fsp.open(file, 'r');
  try {
    const b = Buffer.alloc(2);
    await fh.read(b, 0, 2, 0);
    return b[0] === 0x1f && b[1] === 0x8b;
  } finally {
    await fh.close();
  }
}

/** sha256 of a stream's bytes, passing them on. */
function hashing(): { stream: Transform; digest: () => string } {
  const h = createHash('sha256');
  const stream = new Transform({
    transform(chunk: Buffer, _e, cb) {
      h.update(chunk);
      cb(null, chunk);
    },
  });
  return { stream, digest: () => `sha256:${h.digest('hex')}` };
}

export async function importImage(
  deps: ImportDeps,
  archive: Readable,
  scratch: string,
  report: BuildReporter,
  opts: { maxBytes: number; signal?: AbortSignal },
): Promise<ImportResult> {
  await fsp.mkdir(scratch, { recursive: true, mode: 0o700 });
  try {
    report.progress(0, 1, 'unpacking the image archive');
    await unpackOuter(archive, scratch, opts.maxBytes);
    const { config: configFile, layers, reference } = await locate(scratch);
    const image = await readJson(configFile, ImageConfig, 'config');
    const out: string[] = [];
    for (let i = 0; i < layers.length; i++) {
      opts.signal?.throwIfAborted();
      const l = layers[i]!;
      const diffId = image.rootfs?.diff_ids[i];
      // Known content: a layer already imported (by any image) is reused as it is.
      if (diffId && BLOB_RE.test(diffId)) {
        const known = layerDigest({ v: 1, import: diffId });
        if (deps.layers.has(known)) {
          report.progress(i + 1, layers.length, `layer ${i + 1}/${layers.length} (cached)`, true);
          out.push(known);
          continue;
        }
      }
      report.progress(i + 1, layers.length, `layer ${i + 1}/${layers.length}`);
      const draft = await deps.layers.draft();
      try {
        const h = hashing();
        const source = fs.createReadStream(l.file);
        const unpacked = l.gzip ? source.pipe(zlib.createGunzip()) : source;
        const r = await applyTar(unpacked.pipe(h.stream), draft.dir, {
          idMapBase: deps.idMapBase,
          idMapSize: deps.idMapSize,
          whiteouts: true,
          maxBytes: opts.maxBytes,
          ...(opts.signal ? { signal: opts.signal } : {}),
        });
        const actual = h.digest();
        if (diffId && diffId !== actual) throw new InvalidArgumentError(`layer ${i + 1}'s content hashes to ${actual}, but the image says ${diffId}`);
        const digest = layerDigest({ v: 1, import: actual });
        const skipped = r.skipped ? ` (${r.skipped} device or special files skipped)` : '';
        await draft.commit({ digest, parent: out[out.length - 1] ?? null, kind: 'import', description: `image layer ${i + 1}/${layers.length}${reference ? ` of ${reference}` : ''}${skipped}` });
        if (r.skipped) report.log(i + 1, `layer ${i + 1}: skipped ${r.skipped} device nodes, FIFOs or sockets\n`);
        out.push(digest);
      } catch (e) {
        await draft.abort();
        throw e;
      }
    }
    const c = image.config ?? {};
    const env: Record<string, string> = {};
    for (const kv of c.Env ?? []) {
      const eq = kv.indexOf('=');
      if (eq > 0 && /^[A-Za-z_][A-Za-z0-9_]*$/.test(kv.slice(0, eq))) env[kv.slice(0, eq)] = kv.slice(eq + 1);
    }
    const cmd = [...(c.Entrypoint ?? []), ...(c.Cmd ?? [])];
    const config: TemplateConfig = {
      env,
      ...(c.WorkingDir ? { workdir: c.WorkingDir } : {}),
      ...(c.User ? { user: c.User } : {}),
      ...(cmd.length ? { cmd: cmd.map((a) => (/^[A-Za-z0-9_./:=@%+-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ') } : {}),
    };
    return { layers: out, config, reference };
  } finally {
    await fsp.rm(scratch, { recursive: true, force: true });
  }
}
