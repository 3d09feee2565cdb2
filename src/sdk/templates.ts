/**
 * Templates: the root filesystems sandboxes start from.
 *
 * Static calls read and manage them (`Template.list()`, `get`, `remove`, and
 * `Template.build('debian')` for a built-in). A template of your own is defined
 * in code and built by the daemon into cached layers:
 *
 *   const t = Template.from('base')
 *     .aptInstall(['git'])
 *     .copy('./app', '/app')
 *     .workdir('/app')
 *     .run('make');
 *   await t.build('my-env', { onLog: (s) => process.stdout.write(s) });
 *   await Sandbox.create({ template: 'my-env' });
 *
 * `copy` tars local files (a fixed mtime and root owner, so the same bytes give
 * the same archive and a cached layer), uploads the archive once by its digest,
 * and the definition names it. `Template.importImage()` turns a `docker save`
 * archive into a template the same way.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { z } from 'zod';
import { InvalidArgumentError, UnavailableError, errorFromWire } from '../errors/index.js';
import {
  BuildEvent as WireBuildEvent,
  BuildInfo as WireBuildInfo,
  ListTemplatesResponse,
  TemplateDetails as WireTemplateDetails,
  TemplateInfo,
  type TemplateDefinition,
  type TemplateStep,
} from '../schemas/index.js';
import { HttpClient } from './http.js';
import { readNdjson } from './ndjson.js';
import { pickConnection, resolveConnection, type ConnectionOptions } from './options.js';

export type TemplateInfo = z.infer<typeof TemplateInfo>;
export type TemplateDetails = z.infer<typeof WireTemplateDetails>;
export type BuildInfo = z.infer<typeof WireBuildInfo>;
export type { TemplateDefinition, TemplateStep };

/** One step of a built-in template's build as the daemon reports it. */
export interface BuildProgress {
  phase: string;
  /** 0..1 when known. */
  fraction?: number;
  message?: string;
}

/** The NDJSON events of POST /v1/templates/:name/build. */
const BuiltinBuildEvent = z.discriminatedUnion('type', [
  z.object({ type: z.literal('progress'), phase: z.string(), fraction: z.number().optional(), message: z.string().optional() }),
  z.object({ type: z.literal('done'), template: TemplateInfo }),
  z.object({ type: z.literal('error'), error: z.object({ code: z.string(), message: z.string() }) }),
]);

export interface BuildOptions extends ConnectionOptions {
  /** Rebuild even when the template is already built. */
  force?: boolean;
  /** Called for every progress event, in order. */
  onProgress?: (p: BuildProgress) => void;
}

/** How a step of a user template's build went so far. */
export interface StepProgress {
  /** 1-based step (0 before the first). */
  step: number;
  steps: number;
  phase: string;
  /** The step's layer was already built (a cache hit). */
  cached: boolean;
}

export interface BuildTemplateOptions extends ConnectionOptions {
  /** Each step as it starts (or is found cached). */
  onProgress?: (p: StepProgress) => void;
  /** The steps' output as it comes (UTF-8 text). */
  onLog?: (text: string, step: number) => void;
  /** Each archive a copy step (or an import) needs, before it is sent: its size, and whether the daemon already has it. */
  onUpload?: (u: { digest: string; bytes: number; cached: boolean }) => void;
  /** Stop following (the build itself goes on in the daemon; see Template.buildInfo). */
  signal?: AbortSignal;
}

export interface CopyOptions {
  /** Owner of the copied files inside the sandbox (a name or uid, optionally :group); default root. */
  owner?: string;
  /** Leave out paths (relative to the copied directory, `/`-separated) for which this returns true. */
  ignore?: (relativePath: string) => boolean;
}

/** Largest archive a copy step may make (the daemon's limit too). */
const MAX_ARCHIVE_BYTES = 4 * 1024 ** 3;
/** Entries in one copy step's archive. */
const MAX_ARCHIVE_ENTRIES = 1_000_000;
/** Fixed mtime of copied files: the same files give the same archive, and the same cached layer. */
const FIXED_MTIME = new Date(0);

const DIGEST = /^sha256:[0-9a-f]{64}$/;

type PendingStep = TemplateStep | { type: 'copy-local'; source: string; dest: string; options: CopyOptions };

function client(opts: ConnectionOptions): HttpClient {
  return new HttpClient(resolveConnection(pickConnection(opts)));
}

/** A definition being written in code; build() turns it into a template. Each method returns a new Template. */
export class Template {
  private constructor(
    private readonly base: string,
    private readonly steps: readonly PendingStep[],
    private readonly startCmd?: string,
  ) {}

  /** Start from a built-in template (busybox, debian, base) or one of yours. */
  static from(base: string): Template {
    return new Template(base, []);
  }

  /**
   * A template from a definition object (as GET /v1/templates/:name shows, or a
   * JSON file holds). A copy step whose source is not an uploaded archive's
   * digest names a local file or directory, relative to `baseDir` (default: the
   * working directory).
   */
  static fromDefinition(def: TemplateDefinition, opts: { baseDir?: string } = {}): Template {
    const steps = def.steps.map((s): PendingStep => {
      if (s.type !== 'copy' || DIGEST.test(s.source)) return s;
      return { type: 'copy-local', source: path.resolve(opts.baseDir ?? '.', s.source), dest: s.dest, options: s.owner ? { owner: s.owner } : {} };
    });
    return new Template(def.from, steps, def.cmd);
  }

  private with(step: PendingStep): Template {
    return new Template(this.base, [...this.steps, step], this.startCmd);
  }

  /** Run a shell command (/bin/sh -c) in a build sandbox; what it changes becomes a layer. */
  run(command: string): Template {
    return this.with({ type: 'run', command });
  }

  /** apt-get install these Debian packages (needs a Debian-based template). */
  aptInstall(packages: string[]): Template {
    return this.with({ type: 'apt', packages });
  }

  /** npm install these packages, globally or into the working directory. */
  npmInstall(packages: string[], opts: { global?: boolean } = {}): Template {
    return this.with({ type: 'npm', packages, ...(opts.global ? { global: true } : {}) });
  }

  /** Copy a local file or directory (its contents) into `dest`, a directory in the sandbox. */
  copy(localPath: string, dest: string, options: CopyOptions = {}): Template {
    return this.with({ type: 'copy-local', source: path.resolve(localPath), dest, options });
  }

  /** Environment variables of the later steps and of every sandbox of the template. */
  env(vars: Record<string, string>): Template {
    return this.with({ type: 'env', vars });
  }

  /** Working directory of the later steps and of commands in the sandboxes. */
  workdir(dir: string): Template {
    return this.with({ type: 'workdir', path: dir });
  }

  /** User of the later steps and of commands in the sandboxes. */
  user(user: string): Template {
    return this.with({ type: 'user', user });
  }

  /** A start command recorded with the template. */
  cmd(command: string): Template {
    return new Template(this.base, this.steps, command);
  }

  /**
   * The definition the daemon builds. Local copies are archived and hashed
   * here (not uploaded); `archives` gets each archive's file by digest.
   */
  async definition(archives?: Map<string, string>): Promise<TemplateDefinition> {
    const steps: TemplateStep[] = [];
    for (const s of this.steps) {
      if (s.type !== 'copy-local') {
        steps.push(s);
        continue;
      }
      const { file, digest } = await archiveLocal(s.source, s.options.ignore);
      if (archives) archives.set(digest, file);
      else await fsp.rm(path.dirname(file), { recursive: true, force: true });
      steps.push({ type: 'copy', source: digest, dest: s.dest, ...(s.options.owner ? { owner: s.options.owner } : {}) });
    }
    return { from: this.base, steps, ...(this.startCmd !== undefined ? { cmd: this.startCmd } : {}) };
  }

  /**
   * Build the template as `name` (yours; a rebuild replaces it once it
   * succeeds): uploads what copy steps need, starts the build, follows it and
   * resolves with the finished build. A failed build rejects with its step,
   * exit code and the end of its output.
   */
  async build(name: string, opts: BuildTemplateOptions = {}): Promise<BuildInfo> {
    const http = client(opts);
    const archives = new Map<string, string>();
    try {
      const definition = await this.definition(archives);
      for (const [digest, file] of archives) await uploadBlob(http, digest, file, opts);
      return await followBuild(http, { name, definition }, opts);
    } finally {
      for (const file of archives.values()) await fsp.rm(path.dirname(file), { recursive: true, force: true });
    }
  }

  // --- the daemon's templates ------------------------------------------------------

  /** Every template you can use, with its build status. */
  static async list(opts: ConnectionOptions = {}): Promise<TemplateInfo[]> {
    return (await client(opts).json('GET', '/templates', ListTemplatesResponse)).templates;
  }

  /** One template in detail: layers, config, definition. */
  static async get(name: string, opts: ConnectionOptions = {}): Promise<TemplateDetails> {
    return client(opts).json('GET', `/templates/${encodeURIComponent(name)}`, WireTemplateDetails);
  }

  /** Remove one of your templates (refused while sandboxes use it). */
  static async remove(name: string, opts: ConnectionOptions = {}): Promise<void> {
    await client(opts).empty('DELETE', `/templates/${encodeURIComponent(name)}`);
  }

  /** A build's state by id (builds go on when nobody follows them). */
  static async buildInfo(buildId: string, opts: ConnectionOptions = {}): Promise<BuildInfo> {
    return client(opts).json('GET', `/builds/${encodeURIComponent(buildId)}`, WireBuildInfo);
  }

  /**
   * Make template `name` from an OCI image: a `docker save` / `podman save`
   * tarball, or an OCI image layout (the directory, or a tar of it).
   */
  static async importImage(name: string, archivePath: string, opts: BuildTemplateOptions = {}): Promise<BuildInfo> {
    const http = client(opts);
    const st = await fsp.stat(archivePath).catch(() => {
      throw new InvalidArgumentError(`import: ${archivePath} does not exist`);
    });
    // An OCI layout directory is archived here, the same way copy steps archive local files.
    const made = st.isDirectory() ? await archiveLocal(path.resolve(archivePath)) : undefined;
    try {
      const file = made?.file ?? archivePath;
      const digest = made?.digest ?? (await fileDigest(file));
      await uploadBlob(http, digest, file, opts);
      return await followBuild(http, { name, image: digest }, opts);
    } finally {
      if (made) await fsp.rm(path.dirname(made.file), { recursive: true, force: true });
    }
  }

  /** Build a built-in template (busybox, debian, base) and resolve with its info once ready; a failed build rejects. */
  static async build(name: string, opts: BuildOptions = {}): Promise<TemplateInfo> {
    const http = client(opts);
    const p = `/templates/${encodeURIComponent(name)}/build`;
    const { body, fail } = await http.stream('POST', p, { query: { force: opts.force ? 'true' : undefined } });
    for await (const ev of readNdjson(body, BuiltinBuildEvent, { what: `POST ${p}`, onReadError: fail })) {
      if (ev.type === 'progress') {
        const bp: BuildProgress = { phase: ev.phase };
        if (ev.fraction !== undefined) bp.fraction = ev.fraction;
        if (ev.message !== undefined) bp.message = ev.message;
        opts.onProgress?.(bp);
      } else if (ev.type === 'done') {
        return ev.template;
      } else {
        throw errorFromWire(ev.error.code, ev.error.message);
      }
    }
    throw new UnavailableError(`POST ${p}: the build stream ended before the build finished`);
  }
}

/** POST /v1/templates?follow=true and read its events to the end. */
async function followBuild(http: HttpClient, body: { name: string; definition: TemplateDefinition } | { name: string; image: string }, opts: BuildTemplateOptions): Promise<BuildInfo> {
  const what = `build of template ${body.name}`;
  const { body: stream, fail } = await http.stream('POST', '/templates', { query: { follow: 'true' }, json: body, signal: opts.signal, timeoutMs: 0 });
  for await (const ev of readNdjson(stream, WireBuildEvent, { what, onReadError: fail })) {
    if (ev.type === 'progress') opts.onProgress?.({ step: ev.step, steps: ev.steps, phase: ev.phase, cached: ev.cached === true });
    else if (ev.type === 'log') opts.onLog?.(ev.data, ev.step);
    else if (ev.type === 'done') {
      if (ev.build.status === 'failed') throw errorFromWire('sandbox_error', `${what} failed: ${ev.build.error ?? 'no reason given'}`);
      return ev.build;
    } else throw errorFromWire(ev.error.code, `${what} failed: ${ev.error.message}`);
  }
  throw new UnavailableError(`${what}: the stream ended before the build finished`);
}

async function uploadBlob(http: HttpClient, digest: string, file: string, opts: Pick<BuildTemplateOptions, 'signal' | 'onUpload'>): Promise<void> {
  const p = `/blobs/${digest}`;
  const signal = opts.signal;
  const bytes = (await fsp.stat(file)).size;
  try {
    await http.empty('GET', p, { signal });
    opts.onUpload?.({ digest, bytes, cached: true });
    return; // already uploaded
  } catch (e) {
    if (!(e instanceof Error && 'code' in e && e.code === 'not_found')) throw e;
  }
  opts.onUpload?.({ digest, bytes, cached: false });
  const body = Readable.toWeb(fs.createReadStream(file)) as unknown as ReadableStream<Uint8Array>;
  await http.empty('PUT', p, { body, contentType: 'application/octet-stream', signal, timeoutMs: 0 });
}

async function fileDigest(file: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(fs.createReadStream(file), h);
  return `sha256:${h.digest('hex')}`;
}

/**
 * Tar `source` (a directory's contents, or one file) into a temp file, in
 * sorted order with fixed times and root owner, hashing as it goes.
 */
async function archiveLocal(source: string, ignore?: (rel: string) => boolean): Promise<{ file: string; digest: string }> {
  const tar = (await import('tar-stream')).default;
  const st = await fsp.lstat(source).catch(() => {
    throw new InvalidArgumentError(`copy: ${source} does not exist`);
  });
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'capsule-copy-'));
  const file = path.join(dir, 'archive.tar');
  const pack = tar.pack();
  const hash = createHash('sha256');
  let bytes = 0;
  const hashing = new Transform({
    transform(chunk: Buffer, _e, cb) {
      bytes += chunk.length;
      if (bytes > MAX_ARCHIVE_BYTES) {
        cb(new InvalidArgumentError(`copy: ${source} makes an archive over ${MAX_ARCHIVE_BYTES} bytes`));
        return;
      }
      hash.update(chunk);
      cb(null, chunk);
    },
  });
  const written = pipeline(pack, hashing, fs.createWriteStream(file, { mode: 0o600 }));
  written.catch(() => undefined);
  const header = (name: string, s: fs.Stats) => ({ name, mode: s.mode & 0o7777, uid: 0, gid: 0, uname: 'root', gname: 'root', mtime: FIXED_MTIME });
  const add = (h: Parameters<typeof pack.entry>[0], body?: Readable): Promise<void> =>
    new Promise((resolve, reject) => {
      if (!body) {
        pack.entry(h, (err) => (err ? reject(err) : resolve()));
        return;
      }
      const entry = pack.entry(h, (err) => (err ? reject(err) : resolve()));
      body.on('error', reject);
      body.pipe(entry);
    });
  let entries = 0;
  const walk = async (abs: string, rel: string): Promise<void> => {
    const s = await fsp.lstat(abs);
    if (rel !== '' && ignore?.(rel)) return;
    if (++entries > MAX_ARCHIVE_ENTRIES) throw new InvalidArgumentError(`copy: ${source} holds more than ${MAX_ARCHIVE_ENTRIES} entries`);
    if (s.isDirectory()) {
      if (rel !== '') await add({ ...header(rel, s), type: 'directory' });
      for (const name of (await fsp.readdir(abs)).sort()) await walk(path.join(abs, name), rel === '' ? name : `${rel}/${name}`);
    } else if (s.isSymbolicLink()) {
      await add({ ...header(rel, s), type: 'symlink', linkname: await fsp.readlink(abs) });
    } else if (s.isFile()) {
      const h = { ...header(rel, s), type: 'file' as const, size: s.size };
      if (s.size === 0) await new Promise<void>((resolve, reject) => pack.entry(h, Buffer.alloc(0), (err) => (err ? reject(err) : resolve())));
      else await add(h, fs.createReadStream(abs, { end: s.size - 1 }));
    } // sockets, FIFOs and devices are not copied
  };
  try {
    if (st.isDirectory()) await walk(source, '');
    else await walk(source, path.basename(source));
    pack.finalize();
    await written;
    return { file, digest: `sha256:${hash.digest('hex')}` };
  } catch (e) {
    pack.destroy();
    await fsp.rm(dir, { recursive: true, force: true });
    throw e;
  }
}
