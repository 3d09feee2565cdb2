/**
 * The sandbox's filesystem: `sandbox.files`. Reads and writes stream: a
 * `format: 'stream'` read and a stream upload never hold the whole file in
 * memory on either side.
 */
import { Readable } from 'node:stream';
import { InvalidArgumentError, NotFoundError, UnavailableError, errorFromWire } from '../errors/index.js';
import { FileEntry, ListFilesResponse, WatchEvent, WriteFileResponse } from '../schemas/index.js';
import { isAbortError, type HttpClient } from './http.js';
import { readNdjson } from './ndjson.js';
import { getBytes, type RequestBody } from './transport.js';

/** Anything `files.write` accepts as content. */
export type WriteData = string | Uint8Array | ArrayBuffer | Blob | ReadableStream<Uint8Array> | NodeJS.ReadableStream;

export interface ReadOptions {
  /** `text` (default): a string decoded as UTF-8; `bytes`: a Uint8Array; `stream`: a web ReadableStream of bytes. */
  format?: 'text' | 'bytes' | 'stream';
  signal?: AbortSignal;
}

export interface WriteOptions {
  /** Permission bits: a number (0o755) or an octal string ('755'); default 644. */
  mode?: number | string;
  /**
   * Metadata for the file (kept as extended attributes, shown by stat and list): replaces what the
   * file had. Keys are HTTP token characters, stored lowercased; values printable ASCII; at most 128
   * keys and 4096 bytes per file. Without it the written file has no metadata.
   */
  metadata?: Record<string, string>;
  signal?: AbortSignal;
  /**
   * Limit for the upload in ms (0: none). Default: the connection's
   * requestTimeoutMs for in-memory data, no limit for streams (which may be
   * arbitrarily long; use `signal` to stop them).
   */
  timeoutMs?: number;
}

export interface ListOptions {
  /** At most this many entries; default 10,000 (the daemon's default). */
  limit?: number;
}

/** A directory listing, and whether `limit` cut it short. */
export interface DirectoryListing {
  entries: FileEntry[];
  /** True when the directory has more entries than were returned. */
  truncated: boolean;
}

/** What `watchDir` calls: a change under the watched directory, or `overflow` (events were lost: rescan). */
export type FilesystemEvent =
  | { type: 'create' | 'write' | 'remove' | 'rename' | 'chmod'; path: string; isDir: boolean }
  | { type: 'overflow' };

export interface WatchOptions {
  /** Also watch every directory below, including ones made later; default false. */
  recursive?: boolean;
  /** Stops the watch, like `stop()`. */
  signal?: AbortSignal;
}

/** A running watch. */
export interface WatchHandle {
  /** Stop watching (the daemon ends the watch in the sandbox). */
  stop(): void;
  /**
   * Resolves when the watch ends: `stop()`, the watched directory was removed (`gone`), or the sandbox
   * ended (`ended`); rejects when the connection fails or a callback throws.
   */
  readonly done: Promise<{ reason: 'stopped' | 'gone' | 'ended' }>;
}

function isWebStream(d: unknown): d is ReadableStream<Uint8Array> {
  return d instanceof ReadableStream;
}

function isNodeStream(d: unknown): d is NodeJS.ReadableStream {
  return typeof d === 'object' && d !== null && typeof (d as { pipe?: unknown }).pipe === 'function' && typeof (d as { on?: unknown }).on === 'function';
}

function modeString(mode: number | string | undefined): string | undefined {
  if (mode === undefined) return undefined;
  return typeof mode === 'number' ? mode.toString(8) : mode;
}

/** Uploads from this size on ask for the raw path (Upgrade: capsule-upload), which reads them without node:http's per-chunk buffers. */
export const RAW_UPLOAD_MIN_BYTES = 1024 * 1024;
const RAW_UPLOAD_HEADERS = { connection: 'Upgrade', upgrade: 'capsule-upload' };

/** Bytes of a body whose size is known up front (all but streams). */
function knownSize(body: RequestBody): number {
  if (typeof body === 'string') return Buffer.byteLength(body, 'utf8');
  if (body instanceof Uint8Array || body instanceof ArrayBuffer) return body.byteLength;
  if (body instanceof Blob) return body.size;
  return 0;
}

/** The raw upload was not taken (a daemon before it, or something in between that will not pass it): not the upload's own error. */
function rawRefused(e: unknown): boolean {
  return (e instanceof InvalidArgumentError && e.message.includes('capsule-upload')) || e instanceof UnavailableError;
}

export class Files {
  private readonly base: string;

  /** @internal */
  constructor(
    private readonly http: HttpClient,
    sandboxId: string,
  ) {
    this.base = `/sandboxes/${encodeURIComponent(sandboxId)}/files`;
  }

  /** Read a file: text by default, or bytes, or a stream (nothing held whole in memory). */
  read(path: string, opts?: { format?: 'text'; signal?: AbortSignal }): Promise<string>;
  read(path: string, opts: { format: 'bytes'; signal?: AbortSignal }): Promise<Uint8Array>;
  read(path: string, opts: { format: 'stream'; signal?: AbortSignal }): Promise<ReadableStream<Uint8Array>>;
  read(path: string, opts?: ReadOptions): Promise<string | Uint8Array | ReadableStream<Uint8Array>>;
  async read(path: string, opts: ReadOptions = {}): Promise<string | Uint8Array | ReadableStream<Uint8Array>> {
    switch (opts.format ?? 'text') {
      case 'stream':
        return (await this.http.stream('GET', this.base, { query: { path }, signal: opts.signal })).body;
      case 'bytes':
        return this.download(path, opts.signal);
      default:
        return new TextDecoder('utf-8').decode(await this.download(path, opts.signal));
    }
  }

  /**
   * The whole file as bytes. A file download is the one large body the SDK reads whole, so it first
   * takes transport's lean download path (getBytes), under the same timeout and signals as any request;
   * whatever that path does not handle (an error answer, https, a proxy's chunked body, a connection it
   * cannot make) goes through the general path, which maps errors.
   */
  private async download(path: string, signal: AbortSignal | undefined): Promise<Uint8Array> {
    const req = { query: { path }, signal };
    const conn = this.http.conn;
    const url = new URL(this.http.url(this.base, req.query));
    const timeoutMs = conn.requestTimeoutMs;
    const timer = timeoutMs > 0 ? AbortSignal.timeout(timeoutMs) : undefined;
    const userSignals = [conn.signal, signal].filter((s): s is AbortSignal => s !== undefined);
    const headers: Record<string, string> = { accept: 'application/octet-stream' };
    if (conn.apiKey) headers.authorization = `Bearer ${conn.apiKey}`;
    try {
      const got = await getBytes(url, headers, AbortSignal.any([...userSignals, ...(timer ? [timer] : [])]));
      if (got) return got;
    } catch (e) {
      // Aborted or timed out: report it as the general path would, without starting over.
      if (userSignals.some((s) => s.aborted) || timer?.aborted) {
        throw this.http.translate(e, `GET ${this.base}`, url.toString(), userSignals, timer?.aborted === true, timeoutMs);
      }
    }
    return this.http.bytes('GET', this.base, req);
  }

  /**
   * Write a file, creating parent directories. Streams (web or Node) are
   * uploaded as they are read, never buffered whole. Returns the path and
   * the size written.
   */
  async write(path: string, data: WriteData, opts: WriteOptions = {}): Promise<WriteFileResponse> {
    let body: RequestBody;
    let streamed = false;
    if (typeof data === 'string' || data instanceof Uint8Array || data instanceof ArrayBuffer || data instanceof Blob) {
      body = data;
    } else if (isWebStream(data)) {
      body = data;
      streamed = true;
    } else if (isNodeStream(data)) {
      const readable = data instanceof Readable ? data : new Readable().wrap(data);
      body = Readable.toWeb(readable) as unknown as ReadableStream<Uint8Array>;
      streamed = true;
    } else {
      throw new TypeError('files.write: data must be a string, Uint8Array, ArrayBuffer, Blob or a readable stream');
    }
    const timeoutMs = opts.timeoutMs ?? (streamed ? 0 : undefined);
    const put = (raw: boolean) =>
      this.http.json('PUT', this.base, WriteFileResponse, {
        query: { path, mode: modeString(opts.mode), metadata: opts.metadata !== undefined ? JSON.stringify(opts.metadata) : undefined },
        body,
        signal: opts.signal,
        ...(raw ? { headers: RAW_UPLOAD_HEADERS } : {}),
        ...(timeoutMs !== undefined ? { timeoutMs } : {}),
      });
    // A large body of known length takes the daemon's raw upload path (ADR 0016); a daemon or a proxy
    // that cannot take it gets the same bytes again as a plain PUT.
    if (streamed || knownSize(body) < RAW_UPLOAD_MIN_BYTES) return put(false);
    try {
      return await put(true);
    } catch (e) {
      if (opts.signal?.aborted || !rawRefused(e)) throw e;
      return put(false);
    }
  }

  /** Entries of a directory (see listDetailed for whether the limit cut it short). */
  /**
   * Watch a directory: `onEvent` gets create, write, remove, rename (the old name; the new one comes as
   * create) and chmod events with paths relative to it, and `overflow` when events were lost. Resolves
   * once the watch is in place: every change after that is reported.
   */
  async watchDir(path: string, onEvent: (ev: FilesystemEvent) => void | Promise<void>, opts: WatchOptions = {}): Promise<WatchHandle> {
    const abort = new AbortController();
    const stopFromCaller = () => abort.abort();
    opts.signal?.addEventListener('abort', stopFromCaller, { once: true });
    const what = `GET ${this.base}/watch`;
    const stream = await this.http.stream('GET', `${this.base}/watch`, {
      query: { path, recursive: opts.recursive ? 'true' : undefined },
      signal: abort.signal,
    });
    const events = readNdjson(stream.body, WatchEvent, { what, onReadError: stream.fail })[Symbol.asyncIterator]();
    const first = await events.next();
    if (first.done || first.value.type !== 'start') {
      abort.abort();
      throw first.done ? new UnavailableError(`${what}: the stream ended before the watch started`) : new UnavailableError(`${what}: unexpected first event ${first.value.type}`);
    }
    const done = (async (): Promise<{ reason: 'stopped' | 'gone' | 'ended' }> => {
      try {
        for (;;) {
          const r = await events.next();
          if (r.done) return { reason: abort.signal.aborted ? 'stopped' : 'ended' };
          const ev = r.value;
          switch (ev.type) {
            case 'start':
              break;
            case 'end':
              return { reason: ev.reason };
            case 'error':
              throw errorFromWire(ev.error.code, ev.error.message);
            case 'overflow':
              await onEvent({ type: 'overflow' });
              break;
            default:
              await onEvent({ type: ev.type, path: ev.path, isDir: ev.isDir === true });
          }
        }
      } catch (e) {
        if (abort.signal.aborted && (isAbortError(e) || e instanceof UnavailableError)) return { reason: 'stopped' };
        throw e;
      } finally {
        opts.signal?.removeEventListener('abort', stopFromCaller);
        abort.abort();
      }
    })();
    done.catch(() => undefined);
    return { stop: () => abort.abort(), done };
  }

  async list(path: string, opts: ListOptions = {}): Promise<FileEntry[]> {
    return (await this.listDetailed(path, opts)).entries;
  }

  /** Entries of a directory plus `truncated`, true when there were more than `limit`. */
  async listDetailed(path: string, opts: ListOptions = {}): Promise<DirectoryListing> {
    return this.http.json('GET', `${this.base}/list`, ListFilesResponse, { query: { path, limit: opts.limit } });
  }

  /** Type, size, mode and times of one path (symlinks are not followed). NotFoundError if missing. */
  async stat(path: string): Promise<FileEntry> {
    return this.http.json('GET', `${this.base}/stat`, FileEntry, { query: { path } });
  }

  /** True when the path exists. */
  async exists(path: string): Promise<boolean> {
    try {
      await this.stat(path);
      return true;
    } catch (e) {
      if (e instanceof NotFoundError) return false;
      throw e;
    }
  }

  /** Create a directory and its parents; fine if it already exists. */
  async makeDir(path: string): Promise<void> {
    await this.http.empty('POST', `${this.base}/mkdir`, { json: { path } });
  }

  /** Remove a file, or a directory with `recursive: true`. */
  async remove(path: string, opts: { recursive?: boolean } = {}): Promise<void> {
    await this.http.empty('DELETE', this.base, { query: { path, recursive: opts.recursive ? 'true' : undefined } });
  }

  /** Move or rename a path. */
  async rename(from: string, to: string): Promise<void> {
    await this.http.empty('POST', `${this.base}/rename`, { json: { from, to } });
  }
}
