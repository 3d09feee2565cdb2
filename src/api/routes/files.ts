import type { Readable } from 'node:stream';
import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import {
  FileEntry,
  ListFilesQuery,
  ListFilesResponse,
  MakeDirRequest,
  PathQuery,
  ReadFileQuery,
  RemoveFileQuery,
  RenameRequest,
  SandboxParams,
  WriteFileQuery,
  WriteFileResponse,
} from '../../schemas/index.js';
import { InvalidArgumentError } from '../../errors/index.js';
import { rawUploadBody } from '../raw-upload.js';

/** The `metadata` query parameter: a JSON object of strings (its rules are checked by the file service). */
function metadataParam(raw: string): Record<string, string> {
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new InvalidArgumentError('metadata must be a JSON object of strings, e.g. {"owner":"ci"}', { field: 'metadata' });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InvalidArgumentError('metadata must be a JSON object of strings', { field: 'metadata' });
  return v as Record<string, string>;
}

export function fileRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/files',
    summary: 'Download a regular file (streamed)',
    tag: 'files',
    params: SandboxParams,
    query: ReadFileQuery,
    responses: { 200: { description: 'File bytes', contentType: 'application/octet-stream' } },
    handler: async ({ params, query, reply, ctx }) => {
      const { size, stream } = await s.files.read(ctx, params.id, query.path);
      reply.header('content-type', 'application/octet-stream');
      // Exactly `size` bytes follow: the stream ends there even if the file grows meanwhile, and fails if it
      // shrinks (the connection is then cut, which the client sees as an error, never as a short file).
      // A fixed length rather than chunked encoding, so clients can size their buffer and show progress.
      reply.header('content-length', String(size));
      // Headers are out by then, so a failure can only cut the connection: say why in the log.
      stream.once('error', (err) => reply.log.warn({ err, sandbox: params.id, path: query.path }, 'file download cut off'));
      // Returned, not sent here: the route wrapper sends it, and nothing waits on the reply itself, whose
      // completion after a cut stream would otherwise be answered a second time.
      return stream;
    },
  });

  t.add({
    method: 'PUT',
    url: '/v1/sandboxes/:id/files',
    summary: 'Upload a file (streamed raw body); creates parent directories',
    tag: 'files',
    params: SandboxParams,
    query: WriteFileQuery,
    body: 'binary',
    responses: { 200: { description: 'Written', schema: WriteFileResponse } },
    handler: async ({ params, query, req, reply, ctx }) => {
      // A raw upload (Upgrade: capsule-upload, api/raw-upload.ts) brings its body off node:http's path.
      const raw = rawUploadBody(req.raw);
      const body = raw ?? (req.body as Readable | Buffer | string | undefined);
      const data =
        body === undefined || body === null
          ? Buffer.alloc(0)
          : typeof body === 'string'
            ? Buffer.from(body, 'utf8')
            : Buffer.isBuffer(body) || typeof (body as Readable).pipe === 'function'
              ? (body as Readable | Buffer)
              : null;
      if (data === null) throw new InvalidArgumentError('send the file as the raw request body (Content-Type: application/octet-stream)');
      try {
        return await s.files.write(ctx, params.id, query.path, data, {
          ...(query.mode ? { mode: parseInt(query.mode, 8) } : {}),
          ...(query.metadata !== undefined ? { metadata: metadataParam(query.metadata) } : {}),
        });
      } catch (err) {
        // The upload may still be arriving: answer, then close rather than read the rest (a raw upload's
        // connection closes after its answer anyway).
        if (!raw && !Buffer.isBuffer(data) && !data.readableEnded) {
          reply.header('connection', 'close');
          data.resume();
        }
        throw err;
      }
    },
  });

  t.add({
    method: 'DELETE',
    url: '/v1/sandboxes/:id/files',
    summary: 'Remove a file or (with recursive=true) a directory tree; symlinks are removed, never followed',
    tag: 'files',
    params: SandboxParams,
    query: RemoveFileQuery,
    responses: { 204: { description: 'Removed' } },
    handler: async ({ params, query, ctx }) => {
      await s.files.remove(ctx, params.id, query.path, query.recursive === 'true');
    },
  });

  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/files/list',
    summary: 'List a directory (name, type, size, mode, mtime)',
    tag: 'files',
    params: SandboxParams,
    query: ListFilesQuery,
    responses: { 200: { description: 'Entries', schema: ListFilesResponse } },
    handler: async ({ params, query, ctx }) => s.files.list(ctx, params.id, query.path, query.limit),
  });

  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/files/stat',
    summary: 'Stat a path (symlinks are reported, not followed)',
    tag: 'files',
    params: SandboxParams,
    query: PathQuery,
    responses: { 200: { description: 'Entry', schema: FileEntry } },
    handler: async ({ params, query, ctx }) => s.files.stat(ctx, params.id, query.path),
  });

  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/files/mkdir',
    summary: 'Create a directory and its parents',
    tag: 'files',
    params: SandboxParams,
    body: MakeDirRequest,
    responses: { 204: { description: 'Created (or already there)' } },
    handler: async ({ params, body, ctx }) => {
      await s.files.mkdir(ctx, params.id, body.path);
    },
  });

  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/files/rename',
    summary: 'Rename or move a path',
    tag: 'files',
    params: SandboxParams,
    body: RenameRequest,
    responses: { 204: { description: 'Renamed' } },
    handler: async ({ params, body, ctx }) => {
      await s.files.rename(ctx, params.id, body.from, body.to);
    },
  });
}
