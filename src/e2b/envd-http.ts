/**
 * envd's HTTP routes: /health, /envs, /metrics and /files (download; upload as multipart, one or
 * many files, or as a raw octet-stream body, optionally gzip-compressed), reached with the access
 * token or a signed URL. Files go through the file service; bodies stream end to end.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Readable } from 'node:stream';
import zlib from 'node:zlib';
import path from 'node:path';
import busboy from 'busboy';
import type { Services } from '../api/services.js';
import { InvalidArgumentError } from '../errors/index.js';
import { envd } from '../schemas/e2b/index.js';
import type { FileMetadata } from '../schemas/files.js';
import { normalizeMetadata } from '../sandboxes/files.js';
import type { EnvdAuth, EnvdCaller } from './envd-auth.js';
import { giveTo, prepareWrite, requireAccess } from './ownership.js';
import { parse } from './parse.js';
import { effectiveUser, userPath } from './users.js';

type Params = { id: string };
const MAX_UPLOAD_FILES = 1000;

export function envdHttpRoutes(app: FastifyInstance, s: Services, auth: EnvdAuth): void {
  // What isRunning() asks: 204 while it runs, 502 (as E2B's proxy answers) otherwise or for an unknown sandbox.
  app.get('/health', async (req, reply) => {
    const { id } = req.params as Params;
    let running = false;
    try {
      running = auth.record(id).state === 'running';
    } catch {
      running = false;
    }
    if (!running) return reply.code(502).send({ code: 502, message: `sandbox ${id} is not running` });
    return reply.code(204).send();
  });

  app.get('/envs', async (req) => auth.authorize(req, (req.params as Params).id).rec.envs);

  app.get('/metrics', async (req) => {
    const c = auth.authorize(req, (req.params as Params).id);
    const m = s.metrics.get(c.ctx, c.id).metrics.at(-1);
    const mib = 1024 * 1024;
    return {
      ts: Math.floor((m ? Date.parse(m.timestamp) : Date.now()) / 1000),
      cpu_count: m?.cpuCount ?? c.rec.resources.cpus,
      cpu_used_pct: m?.cpuUsedPct ?? 0,
      mem_total: m?.memLimitBytes ?? c.rec.resources.memoryMb * mib,
      mem_used: m?.memUsedBytes ?? 0,
      mem_total_mib: Math.round((m?.memLimitBytes ?? c.rec.resources.memoryMb * mib) / mib),
      mem_used_mib: Math.round((m?.memUsedBytes ?? 0) / mib),
      disk_used: m?.diskUsedBytes ?? 0,
      disk_total: m?.diskQuotaBytes ?? (c.rec.resources.diskMb ?? 0) * mib,
    };
  });

  app.get('/files', async (req, reply) => {
    const q = parse(envd.FilesQuery, req.query, 'query');
    if (!q.path) throw new InvalidArgumentError('path is required');
    const c = fileCaller(auth, req, q, 'read');
    const user = effectiveUser(c.rec, q.username);
    const p = userPath(q.path, user);
    await requireAccess(s, c.ctx, c.id, user, 'r', [p]);
    const { size, stream } = await s.files.read(c.ctx, c.id, p);
    void reply.header('content-type', 'application/octet-stream');
    void reply.header('content-disposition', `attachment; filename="${encodeURIComponent(path.posix.basename(p))}"`);
    stream.once('error', (err) => req.log.warn({ err, sandbox: c.id, path: p }, 'file download cut off'));
    if (acceptsGzip(req) && size > 0) {
      void reply.header('content-encoding', 'gzip');
      return stream.pipe(zlib.createGzip({ level: zlib.constants.Z_BEST_SPEED }));
    }
    void reply.header('content-length', String(size));
    return stream;
  });

  app.post('/files', async (req, reply) => {
    const q = parse(envd.FilesQuery, req.query, 'query');
    const c = fileCaller(auth, req, q, 'write');
    const user = effectiveUser(c.rec, q.username);
    // Checked before anything is touched: a bad key or value is a 400 and the file stays as it was.
    const metadata = normalizeMetadata(metadataHeaders(req));
    const type = String(req.headers['content-type'] ?? '').toLowerCase();
    const written = type.startsWith('multipart/form-data')
      ? await uploadMultipart(s, c, req, user, q.path, metadata)
      : [await uploadRaw(s, c, req, user, q.path, metadata)];
    return reply.code(200).send(written);
  });
}

/** The caller of a file route: the access token, or a signed URL for this path, operation and user. */
function fileCaller(auth: EnvdAuth, req: FastifyRequest, q: envd.FilesQuery & object, operation: 'read' | 'write'): EnvdCaller {
  return auth.running(req, (req.params as Params).id, {
    file: { path: q.path ?? '', operation, user: q.username, signature: q.signature, expiration: q.signature_expiration },
  });
}

const METADATA_HEADER = 'x-metadata-';

/**
 * envd 0.6.2's `X-Metadata-<key>: <value>` headers as metadata: the key is the rest of the (lowercased)
 * header name, and of a header sent twice the first value counts. None at all is an empty map: the
 * upload then leaves the file without metadata, as every upload replaces it.
 */
function metadataHeaders(req: FastifyRequest): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, values] of Object.entries(req.raw.headersDistinct)) {
    if (!name.startsWith(METADATA_HEADER) || !values || values.length === 0) continue;
    out[name.slice(METADATA_HEADER.length)] = values[0]!;
  }
  return out;
}

function acceptsGzip(req: FastifyRequest): boolean {
  const h = req.headers['accept-encoding'];
  return typeof h === 'string' && /(^|,)\s*gzip\s*(;\s*q=(?!0(\.0*)?\s*($|,))[0-9.]+)?\s*($|,)/i.test(h);
}

/** Writes one file as the user would: refused where the user may not write; what it creates is the user's. */
type Written = { path: string; name: string; type: 'file'; metadata?: FileMetadata };

async function writeAs(s: Services, c: EnvdCaller, user: string, target: string, data: Readable | Buffer, metadata: FileMetadata): Promise<Written> {
  const p = userPath(target, user);
  const created = await prepareWrite(s, c.ctx, c.id, user, p);
  await s.files.write(c.ctx, c.id, p, data, { metadata });
  await giveTo(s, c.ctx, c.id, user, created);
  return { path: p, name: path.posix.basename(p), type: 'file', ...(Object.keys(metadata).length > 0 ? { metadata } : {}) };
}

async function uploadRaw(s: Services, c: EnvdCaller, req: FastifyRequest, user: string, target: string | undefined, metadata: FileMetadata) {
  if (!target) throw new InvalidArgumentError('path is required for an application/octet-stream upload');
  const body = req.body as Readable | Buffer | string | undefined | null;
  let data: Readable | Buffer =
    body === undefined || body === null ? Buffer.alloc(0) : typeof body === 'string' ? Buffer.from(body, 'utf8') : (body as Readable | Buffer);
  const encoding = String(req.headers['content-encoding'] ?? '').toLowerCase().trim();
  if (encoding === 'gzip') {
    const gunzip = zlib.createGunzip();
    if (Buffer.isBuffer(data)) gunzip.end(data);
    else (data as Readable).pipe(gunzip);
    data = gunzip;
  } else if (encoding !== '' && encoding !== 'identity') {
    throw new InvalidArgumentError(`content encoding ${encoding} is not supported (gzip or none)`);
  }
  return writeAs(s, c, user, target, data, metadata);
}

/**
 * Each file part goes where the query's path says, or, without one (several files at once), where
 * its file name says (the whole path: busboy keeps it, preservePath). Parts are written one after the other, as they arrive.
 */
function uploadMultipart(s: Services, c: EnvdCaller, req: FastifyRequest, user: string, target: string | undefined, metadata: FileMetadata) {
  return new Promise<Written[]>((resolve, reject) => {
    let bb: busboy.Busboy;
    try {
      bb = busboy({ headers: req.headers, preservePath: true, limits: { files: MAX_UPLOAD_FILES, fields: 100, fieldSize: 64 * 1024 } });
    } catch (err) {
      reject(new InvalidArgumentError(`bad multipart upload: ${(err as Error).message}`));
      return;
    }
    const out: Written[] = [];
    let chain: Promise<void> = Promise.resolve();
    let failed: unknown;
    bb.on('file', (_field, stream, info) => {
      chain = chain.then(async () => {
        if (failed !== undefined) {
          stream.resume();
          return;
        }
        const where = target ?? info.filename;
        if (!where) {
          stream.resume();
          throw new InvalidArgumentError('a file part needs a file name when the query names no path');
        }
        out.push(await writeAs(s, c, user, where, stream, metadata));
      }).catch((err: unknown) => {
        failed ??= err;
        stream.resume();
      });
    });
    bb.on('filesLimit', () => {
      failed ??= new InvalidArgumentError(`at most ${MAX_UPLOAD_FILES} files per upload`);
    });
    bb.on('error', (err) => {
      failed ??= new InvalidArgumentError(`bad multipart upload: ${(err as Error).message}`);
      void chain.then(() => reject(failed));
    });
    bb.on('close', () => {
      void chain.then(() => {
        if (failed !== undefined) reject(failed);
        else if (out.length === 0) reject(new InvalidArgumentError('the upload has no file part'));
        else resolve(out);
      });
    });
    const body = req.body as Readable | Buffer | string;
    if (typeof body === 'string' || Buffer.isBuffer(body)) bb.end(body);
    else body.pipe(bb);
  });
}
