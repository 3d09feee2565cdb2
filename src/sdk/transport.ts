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

/** The whole body as bytes, copied once into a buffer of the announced length when there is one. */
export async function readAll(res: TransportResponse): Promise<Uint8Array> {
  const announced = Number(res.headers['content-length']);
  if (Number.isSafeInteger(announced) && announced >= 0) {
    const out = new Uint8Array(announced);
    let off = 0;
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      // The HTTP parser never delivers more than Content-Length; the check keeps that assumption explicit.
      if (off + chunk.length > announced) throw new Error(`response body longer than its Content-Length of ${announced}`);
      out.set(chunk, off);
      off += chunk.length;
    }
    if (off !== announced) throw new Error(`response body ended after ${off} of ${announced} bytes`);
    return out;
  }
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of res.body as AsyncIterable<Buffer>) {
    parts.push(chunk);
    size += chunk.length;
  }
  const joined = Buffer.concat(parts, size);
  return new Uint8Array(joined.buffer, joined.byteOffset, joined.byteLength);
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
export function webStream(res: TransportResponse): ReadableStream<Uint8Array> {
  return Readable.toWeb(res.body) as unknown as ReadableStream<Uint8Array>;
}
