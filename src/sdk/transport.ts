/**
 * The bytes-on-the-wire part of the SDK: one HTTP request over node:http(s)
 * with a keep-alive connection pool. http.ts builds on it (auth, timeouts,
 * error mapping, validation).
 *
 * Why not fetch: on this path fetch (undici plus web streams) cost about
 * 0.3 ms of CPU per small request, a sixth of an exec round trip, and a
 * download went through three copies and much garbage (100 MB reads were
 * bound by the client at ~150 MB/s). node:http hands us the body as a Node
 * stream, which `bytes()` copies once into a buffer of the announced size.
 */
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { Readable } from 'node:stream';

/** What a request may carry as its body. */
export type RequestBody = string | Uint8Array | ArrayBuffer | Blob | ReadableStream<Uint8Array>;

export interface TransportRequest {
  method: string;
  headers: Record<string, string>;
  body?: RequestBody | undefined;
  /** Aborting it destroys the request, or the response body once headers are in. */
  signal: AbortSignal;
}

export interface TransportResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  /** The body, unread. Errors (abort, broken connection) surface when it is read. */
  body: http.IncomingMessage;
}

// One pool per protocol for the whole process, like fetch's global dispatcher: every Sandbox and
// helper talking to the same daemon reuses warm connections. Idle sockets are unref'd by Node, so
// the pool never keeps a process alive, and they expire on the server's Keep-Alive hint.
const AGENTS = {
  'http:': new http.Agent({ keepAlive: true }),
  'https:': new https.Agent({ keepAlive: true }),
};

/** Send one request; resolves with the response once its headers are in. */
export function sendRequest(url: URL, req: TransportRequest): Promise<TransportResponse> {
  return new Promise((resolve, reject) => {
    const protocol = url.protocol;
    if (protocol !== 'http:' && protocol !== 'https:') {
      reject(new TypeError(`unsupported protocol ${protocol} in ${url.href} (use http:// or https://)`));
      return;
    }
    const headers = { ...req.headers };
    const fixed = fixedBody(req.body);
    if (fixed) headers['content-length'] = String(fixed.byteLength);
    else if (req.body instanceof Blob) headers['content-length'] = String(req.body.size);
    const mod = protocol === 'https:' ? https : http;
    const out = mod.request(url, { method: req.method, headers, agent: AGENTS[protocol], signal: req.signal });
    let answered = false;
    out.on('response', (res) => {
      answered = true;
      // Read errors are reported to whoever reads the body; without a listener an abort after the
      // headers would be an uncaught 'error' event.
      res.on('error', () => undefined);
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body: res });
    });
    // Once answered, a failing upload (the daemon refused it early and closed) is not the caller's
    // error: the answer is.
    out.on('error', (e) => {
      if (!answered) reject(e);
    });
    if (fixed) {
      out.end(fixed);
      return;
    }
    if (req.body === undefined) {
      out.end();
      return;
    }
    const src = req.body instanceof Blob ? Readable.fromWeb(req.body.stream() as never) : Readable.fromWeb(req.body as never);
    src.on('error', (e) => out.destroy(e));
    out.on('close', () => {
      if (!src.destroyed) src.destroy();
    });
    src.pipe(out);
  });
}

/** In-memory bodies, sent with a Content-Length in one write; undefined for streams and Blobs. */
function fixedBody(body: RequestBody | undefined): Uint8Array | undefined {
  if (typeof body === 'string') return Buffer.from(body, 'utf8');
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  return undefined;
}

/**
 * The whole body as bytes, copied once into a buffer of the announced length when there is one.
 * Read with 'data' events, not an async iterator: the iterator costs a promise per chunk and, when
 * chunks queue up, joins them into a new buffer before we copy them again (a 100 MB download took
 * twice the CPU of the socket reads themselves).
 */
export function readAll(res: TransportResponse): Promise<Uint8Array> {
  const announced = Number(res.headers['content-length']);
  const sized = res.headers['content-length'] !== undefined && Number.isSafeInteger(announced) && announced >= 0;
  return new Promise<Uint8Array>((resolve, reject) => {
    const body = res.body;
    // Uninitialised: every byte is overwritten, or the read fails.
    const out = sized ? Buffer.allocUnsafeSlow(announced) : undefined;
    const parts: Buffer[] = [];
    let off = 0;
    let settled = false;
    const fail = (e: Error): void => {
      if (settled) return;
      settled = true;
      body.destroy();
      reject(e);
    };
    body.on('data', (chunk: Buffer) => {
      if (settled) return;
      if (out) {
        // The HTTP parser never delivers more than Content-Length; the check keeps that assumption explicit.
        if (off + chunk.length > announced) return fail(new Error(`response body longer than its Content-Length of ${announced}`));
        chunk.copy(out, off);
      } else {
        parts.push(chunk);
      }
      off += chunk.length;
    });
    body.once('end', () => {
      if (settled) return;
      if (out && off !== announced) return fail(new Error(`response body ended after ${off} of ${announced} bytes`));
      settled = true;
      const whole = out ?? Buffer.concat(parts, off);
      resolve(new Uint8Array(whole.buffer, whole.byteOffset, whole.byteLength));
    });
    body.once('error', (e: Error) => fail(e));
    // A connection that closes before 'end' (aborted, reset) ends the read too.
    body.once('close', () => {
      if (!settled && !body.readableEnded) fail(new Error(`response body ended after ${off}${out ? ` of ${announced}` : ''} bytes`));
    });
  });
}

/** At most `limit` bytes of the body as text; the rest is dropped (the connection is not reused). */
export async function readLimitedText(res: TransportResponse, limit: number): Promise<string> {
  const parts: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      parts.push(chunk);
      size += chunk.length;
      if (size >= limit) break;
    }
  } finally {
    if (!res.body.readableEnded) res.body.destroy();
  }
  return Buffer.concat(parts, size).subarray(0, limit).toString('utf8');
}

/** Read and drop the body, so the connection goes back to the pool. */
export function discard(res: TransportResponse): void {
  res.body.resume();
}

/** The body as a web ReadableStream of bytes; cancelling it closes the response. */
/** What a web stream of a response body holds before it stops reading the socket. */
const WEB_STREAM_BUFFER = 256 * 1024;

/**
 * The body as a web stream that reads the socket only as fast as its consumer: on Node 20,
 * Readable.toWeb reads the whole body into memory ahead of a slow consumer, so a slow watcher or
 * reader would buffer without bound and the daemon would never see back-pressure.
 */
export function webStream(res: TransportResponse): ReadableStream<Uint8Array> {
  const body = res.body;
  return new ReadableStream<Uint8Array>(
    {
      start(controller) {
        body.on('data', (chunk: Buffer) => {
          controller.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
          if ((controller.desiredSize ?? 0) <= 0) body.pause();
        });
        body.once('end', () => controller.close());
        body.once('error', (e) => controller.error(e));
        body.once('close', () => {
          // Closed before its end (aborted, connection lost): an error for the reader, not a clean end.
          if (!body.complete) controller.error(Object.assign(new Error('the connection closed before the response ended'), { code: 'ECONNRESET' }));
        });
      },
      pull() {
        body.resume();
      },
      cancel(reason) {
        body.destroy(reason instanceof Error ? reason : undefined);
      },
    },
    { highWaterMark: WEB_STREAM_BUFFER, size: (c) => c.byteLength },
  );
}

// ---------------------------------------------------------------------------------------------
// The plain HTTP/1.1 path: small API calls and whole-body downloads
//
// node:http reads a socket 64 KiB at a time into a fresh buffer each, runs the parser and a stream
// per read, and builds a ClientRequest, an IncomingMessage and their listeners per request. Measured
// on a 2-vCPU VM: a 100 MB download cost the client ~230 ms of CPU, three times what the same bytes
// cost over a plain socket read into one reused buffer (~75 ms), which capped downloads at ~450
// MB/s; and an exec round trip through node:http took ~0.14 ms longer than the same request written
// on a plain socket (~10% of it). So requests whose body is in memory and whose answer is read whole
// take this narrow path: HTTP/1.1 over net, one write, reads into one reused buffer (`onread`), the
// body copied once into a buffer of its Content-Length.
//
// It speaks only what the daemon answers with: a status line, headers, and a body framed by
// Content-Length (or none for 204/304). What it will not write (https, credentials in the URL,
// header values with CR/LF/NUL) makes `plainRequest` return undefined before anything is sent, and
// the caller takes node:http. Once a request is sent, an answer this path cannot frame is a
// GET's cue to go the general way again ('unframed'), and an error for anything else: a POST is
// never sent twice.

/** Response headers larger than this are not from the daemon: give up on the plain path. */
const MAX_HEAD_BYTES = 64 * 1024;
/**
 * Idle keep-alive sockets kept per origin, and for how long (the daemon's keep-alive timeout is far
 * longer). A burst of concurrent calls opens one socket each; keeping only 4 made the next burst of 32
 * creates reconnect 28 times and ran it ~35% slower (node:http's agent keeps up to 256).
 */
const MAX_IDLE_PER_ORIGIN = 64;
const IDLE_MS = 4000;
const READ_BYTES = 1 << 20;

/** One reused read buffer for every plain socket: callbacks run one at a time and copy out what they keep. */
let readScratch: Buffer | undefined;
/** Idle keep-alive connections by origin (host:port), most recently used last. */
const idleConnections = new Map<string, RawConnection[]>();

/** An answer read whole. */
export interface PlainAnswer {
  status: number;
  body: Buffer;
}

type Outcome = { kind: 'answer'; answer: PlainAnswer } | { kind: 'unframed' };

/** A plain HTTP/1.1 connection that serves one exchange at a time. */
class RawConnection {
  readonly socket: net.Socket;
  /** Receives every read while an exchange runs; undefined while idle. */
  onBytes: ((chunk: Buffer) => void) | undefined;
  /** Bytes of the current response were seen (a reused socket that dies before that is retried, for a GET). */
  used = false;
  closed = false;
  /** The socket's last error, if any: why it closed. */
  error: Error | undefined;

  constructor(readonly origin: string, host: string, port: number) {
    this.socket = net.connect({
      host,
      port,
      onread: {
        buffer: () => (readScratch ??= Buffer.allocUnsafe(READ_BYTES)),
        callback: (n: number, buf: Uint8Array): boolean => {
          const chunk = Buffer.from(buf.buffer, buf.byteOffset, n);
          if (this.onBytes) this.onBytes(chunk);
          else this.drop(); // nothing may arrive on an idle connection
          return true;
        },
      },
    });
    this.socket.setNoDelay(true);
    // Reported through close to whoever waits, with this as the cause (a refused connect says so).
    this.socket.on('error', (e) => (this.error = e));
    this.socket.on('timeout', () => {
      if (!this.onBytes) this.drop(); // idle past IDLE_MS
    });
    this.socket.once('close', () => this.drop());
  }

  /**
   * Out of the idle list and closed, at once: 'close' is emitted a turn after destroy(), and a request
   * that took the connection in between would be written to a dead socket.
   */
  drop(): void {
    this.closed = true;
    const list = idleConnections.get(this.origin);
    const i = list ? list.indexOf(this) : -1;
    if (i >= 0) list!.splice(i, 1);
    this.socket.destroy();
  }

  park(): void {
    const list = idleConnections.get(this.origin) ?? [];
    if (this.closed || this.socket.destroyed || list.length >= MAX_IDLE_PER_ORIGIN) {
      this.socket.destroy();
      return;
    }
    this.onBytes = undefined;
    this.socket.unref();
    this.socket.setTimeout(IDLE_MS);
    list.push(this);
    idleConnections.set(this.origin, list);
  }

  static take(origin: string): RawConnection | undefined {
    const list = idleConnections.get(origin);
    for (let c = list?.pop(); c; c = list!.pop()) {
      // Destroyed by someone else (or half-closed by the server) and not yet told: never hand it out.
      if (c.closed || c.socket.destroyed || !c.socket.writable) {
        c.drop();
        continue;
      }
      c.socket.setTimeout(0);
      c.socket.ref();
      return c;
    }
    return undefined;
  }
}

/** Header names and values the plain path writes itself; anything with a CR, LF or NUL goes the general way. */
function safeHeader(v: string): boolean {
  return !/[\r\n\0]/.test(v);
}

/** Where plain requests go, worked out once per base URL. */
export interface PlainOrigin {
  /** host:port, the pool key. */
  key: string;
  host: string;
  port: number;
  /** The Host header. */
  hostHeader: string;
}

/** The plain path's view of a URL, or undefined when it cannot take it (https, credentials). */
export function plainOrigin(url: URL): PlainOrigin | undefined {
  if (url.protocol !== 'http:' || url.username || url.password) return undefined;
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = Number(url.port || 80);
  return { key: `${host}:${port}`, host, port, hostHeader: url.host };
}

export interface PlainRequest {
  method: string;
  /** Path and query, e.g. /v1/sandboxes?state=all (already encoded). */
  target: string;
  headers: Record<string, string>;
  body?: Buffer | undefined;
  /** Largest body accepted in the answer. */
  maxBody: number;
  signal?: AbortSignal | undefined;
  /** Give up after this many ms with `onTimeout()`'s error (0: never). */
  timeoutMs?: number;
  onTimeout?: () => Error;
}

/**
 * One exchange on the plain path. undefined: nothing was sent, or (GET only) the answer was not one
 * this path frames; the caller uses node:http. Rejects on network failure, abort (the signal's
 * reason), timeout, or an answer it cannot frame to a request that must not be repeated.
 */
export async function plainRequest(origin: PlainOrigin, req: PlainRequest): Promise<PlainAnswer | undefined> {
  if (!safeHeader(req.target) || req.target[0] !== '/') return undefined;
  for (const [k, v] of Object.entries(req.headers)) if (!safeHeader(k) || !safeHeader(v)) return undefined;
  req.signal?.throwIfAborted();
  let head = `${req.method} ${req.target} HTTP/1.1\r\nhost: ${origin.hostHeader}\r\n`;
  for (const [k, v] of Object.entries(req.headers)) head += `${k}: ${v}\r\n`;
  if (req.body !== undefined || (req.method !== 'GET' && req.method !== 'HEAD')) head += `content-length: ${req.body?.length ?? 0}\r\n`;
  head += '\r\n';
  const payload = req.body && req.body.length > 0 ? Buffer.concat([Buffer.from(head, 'latin1'), req.body]) : head;
  const repeatable = req.method === 'GET' || req.method === 'HEAD';
  // A reused connection may have been closed by the server meanwhile: if it dies before any byte of
  // the answer, a GET goes again on a new one (anything else could run twice, so it fails instead; the
  // daemon keeps idle connections far longer than IDLE_MS, so that is rare).
  for (;;) {
    const reused = RawConnection.take(origin.key);
    const conn = reused ?? new RawConnection(origin.key, origin.host, origin.port);
    try {
      const out = await exchange(conn, payload, req);
      if (out.kind === 'answer') return out.answer;
      if (repeatable) return undefined;
      throw new Error('the daemon answered in a form this client cannot frame (no Content-Length)');
    } catch (e) {
      if (repeatable && reused && !conn.used && !req.signal?.aborted) continue;
      throw e;
    }
  }
}

/**
 * GET `url` and return its whole body when the answer is a 2xx with a Content-Length; undefined when
 * the general path should handle it (see above). Rejects on network failure or abort (with the
 * signal's reason), like sendRequest.
 */
export async function getBytes(url: URL, headers: Record<string, string>, signal: AbortSignal): Promise<Uint8Array | undefined> {
  const origin = plainOrigin(url);
  if (!origin) return undefined;
  const got = await plainRequest(origin, { method: 'GET', target: `${url.pathname}${url.search}`, headers, maxBody: Number.MAX_SAFE_INTEGER, signal });
  // An error answer goes again through the general path, which owns error mapping (a GET may repeat).
  if (!got || got.status < 200 || got.status > 299) return undefined;
  return new Uint8Array(got.body.buffer, got.body.byteOffset, got.body.byteLength);
}

function exchange(conn: RawConnection, payload: string | Buffer, req: PlainRequest): Promise<Outcome> {
  return new Promise<Outcome>((resolve, reject) => {
    const sock = conn.socket;
    const signal = req.signal;
    conn.used = false;
    let headBuf: Buffer | undefined;
    let body: Buffer | undefined;
    let status = 0;
    let off = 0;
    let keepAlive = false;
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (err: Error | null, out?: Outcome): void => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      sock.off('close', onClose);
      if (err) {
        conn.onBytes = undefined;
        sock.destroy();
        reject(err);
        return;
      }
      if (out!.kind === 'answer' && keepAlive) conn.park();
      else sock.destroy();
      resolve(out!);
    };
    const onAbort = (): void => finish(signal!.reason instanceof Error ? signal!.reason : new Error('aborted'));
    const onClose = (): void => {
      const why = conn.error ? ` (${conn.error.message})` : '';
      finish(new Error(body ? `response body ended after ${off} of ${body.length} bytes${why}` : `connection closed before a response${why}`));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    sock.once('close', onClose);
    if (req.timeoutMs && req.timeoutMs > 0) {
      timer = setTimeout(() => finish(req.onTimeout?.() ?? new Error(`no answer within ${req.timeoutMs} ms`)), req.timeoutMs);
    }
    const done = (): void => finish(null, { kind: 'answer', answer: { status, body: body! } });

    conn.onBytes = (chunk) => {
      if (settled) return;
      conn.used = true;
      if (!body) {
        headBuf = headBuf ? Buffer.concat([headBuf, chunk]) : Buffer.from(chunk); // the chunk is the shared buffer: copy
        const end = headBuf.indexOf('\r\n\r\n');
        if (end < 0 ? headBuf.length > MAX_HEAD_BYTES : end > MAX_HEAD_BYTES) {
          finish(null, { kind: 'unframed' });
          return;
        }
        if (end < 0) return;
        const parsed = parseHead(headBuf.subarray(0, end).toString('latin1'), req.method);
        if (!parsed) {
          finish(null, { kind: 'unframed' });
          return;
        }
        if (parsed.length > req.maxBody) {
          finish(new Error(`response body of ${parsed.length} bytes is over the limit of ${req.maxBody}`));
          return;
        }
        status = parsed.status;
        keepAlive = parsed.keepAlive;
        body = parsed.length <= 4096 ? Buffer.allocUnsafe(parsed.length) : Buffer.allocUnsafeSlow(parsed.length); // every byte is overwritten, or the read fails
        chunk = headBuf.subarray(end + 4);
        headBuf = undefined;
        if (body.length === 0) {
          if (chunk.length > 0) finish(new Error('bytes after a response without a body'));
          else done();
          return;
        }
      }
      if (off + chunk.length > body.length) {
        finish(new Error(`response body longer than its Content-Length of ${body.length}`));
        return;
      }
      chunk.copy(body, off);
      off += chunk.length;
      if (off === body.length) done();
    };
    sock.write(payload);
  });
}

/** Status line and headers of an answer this path can take: framed by Content-Length alone, or bodiless. */
function parseHead(text: string, method: string): { status: number; length: number; keepAlive: boolean } | undefined {
  const lines = text.split('\r\n');
  const statusLine = /^HTTP\/1\.([01]) (\d{3})(?: |$)/.exec(lines[0] ?? '');
  if (!statusLine) return undefined;
  const code = Number(statusLine[2]);
  if (code < 200 || code > 599) return undefined; // 1xx: not from our daemon
  let length: number | undefined;
  let connection = '';
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0 || line[0] === ' ' || line[0] === '\t') return undefined; // folded or malformed
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (name === 'transfer-encoding') return undefined;
    if (name === 'content-length') {
      if (!/^\d{1,15}$/.test(value) || (length !== undefined && length !== Number(value))) return undefined;
      length = Number(value);
    } else if (name === 'connection') {
      connection = value.toLowerCase();
    }
  }
  if (code === 204 || code === 304 || method === 'HEAD') length = 0;
  if (length === undefined) return undefined;
  const keepAlive = statusLine[1] === '1' ? !/\bclose\b/.test(connection) : /\bkeep-alive\b/.test(connection);
  return { status: code, length, keepAlive };
}
