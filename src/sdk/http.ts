/**
 * The SDK's only door to the network. Every request goes through
 * {@link HttpClient.request}: it adds the API key, applies the timeout and the
 * caller's AbortSignal, and turns every failure into a CapsuleError:
 *
 *  - a JSON error body `{error:{code,message}}` → the matching subclass (errorFromWire);
 *  - a non-2xx status without such a body → a subclass chosen from the status;
 *  - the daemon cannot be reached → UnavailableError naming the URL;
 *  - the timeout passes → TimeoutError;
 *  - a 2xx body that does not match its schema → CapsuleError('internal').
 *
 * The caller's own abort is the one exception: it surfaces as an AbortError
 * (a DOMException), the way fetch itself reports it.
 */
import type { z } from 'zod';
import { CapsuleError, InternalError, TimeoutError, UnavailableError, errorFromWire } from '../errors/index.js';
import type { ErrorCode } from '../errors/index.js';
import { ErrorBody } from '../schemas/index.js';
import type { ResolvedConnection } from './options.js';
import {
  discard,
  plainOrigin,
  plainRequest,
  readAll,
  readLimitedText,
  sendRequest,
  webStream,
  type PlainOrigin,
  type RequestBody,
  type TransportResponse,
} from './transport.js';

export type QueryValue = string | number | boolean | undefined;

export interface RequestOptions {
  query?: Record<string, QueryValue> | Array<[string, string]>;
  /** Sent as JSON with content-type application/json. */
  json?: unknown;
  /** Sent as is (raw upload); a ReadableStream or Blob is streamed. */
  body?: RequestBody;
  contentType?: string;
  /** More request headers (the raw upload's Upgrade pair). */
  headers?: Record<string, string>;
  signal?: AbortSignal | undefined;
  /**
   * Limit for this request in ms (0: none); default: the connection's
   * requestTimeoutMs. For `stream` responses it stops counting once the
   * headers are in.
   */
  timeoutMs?: number;
}

/** How much of an unexpected (non-JSON) error body is quoted in the message. */
const ERROR_SNIPPET_CHARS = 300;
/** Error bodies are small; never read more than this of one. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;

const STATUS_CODES: Record<number, ErrorCode> = {
  400: 'invalid_argument',
  401: 'unauthenticated',
  403: 'permission_denied',
  404: 'not_found',
  409: 'conflict',
  413: 'payload_too_large',
  429: 'rate_limited',
  502: 'unavailable',
  503: 'unavailable',
  504: 'timeout',
};

/** The error fetch rejects with when its signal is aborted. */
export function abortError(signal?: AbortSignal): Error {
  const reason: unknown = signal?.reason;
  if (reason instanceof Error && reason.name === 'AbortError') return reason;
  const err = new DOMException('the operation was aborted', 'AbortError');
  if (reason !== undefined) Object.defineProperty(err, 'cause', { value: reason, enumerable: false });
  return err;
}

/** A timeout measured by the SDK itself (details.clientTimeoutMs tells it from the daemon's own). */
export function clientTimeout(what: string, timeoutMs: number): TimeoutError {
  return new TimeoutError(`${what} timed out after ${timeoutMs} ms (requestTimeoutMs / CAPSULE_REQUEST_TIMEOUT_MS)`, { clientTimeoutMs: timeoutMs });
}

export function isAbortError(e: unknown): boolean {
  return e instanceof Error && e.name === 'AbortError';
}

/** Build the domain error for a non-2xx response. */
async function errorFromResponse(res: TransportResponse, what: string): Promise<CapsuleError> {
  let text = '';
  try {
    text = await readLimitedText(res, MAX_ERROR_BODY_BYTES);
  } catch {
    // The body broke off; fall back to the status alone.
  }
  return errorFromText(res.status, text, what);
}

/** The domain error for a non-2xx answer whose body (at most MAX_ERROR_BODY_BYTES of it) is `text`. */
export function errorFromText(status: number, text: string, what: string): CapsuleError {
  try {
    const parsed = ErrorBody.safeParse(JSON.parse(text));
    if (parsed.success) {
      const { code, message, details } = parsed.data.error;
      return errorFromWire(code, message, details);
    }
  } catch {
    // Not JSON: a proxy or something else answered.
  }
  const code = STATUS_CODES[status] ?? 'internal';
  const snippet = text.trim().slice(0, ERROR_SNIPPET_CHARS);
  return errorFromWire(code, `${what} failed with HTTP ${status}${snippet ? `: ${snippet}` : ''}`, { status });
}

/** Largest JSON answer read whole: a command result holds at most 2 x 16 MiB of output, escaped. */
const MAX_JSON_BYTES = 256 * 1024 * 1024;

function describeIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 3)
    .map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`)
    .join('; ');
}

/** Check a response (or event) against its schema; a mismatch is the daemon's fault. */
export function validateResponse<S extends z.ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    throw new InternalError(`unexpected response to ${what}: ${describeIssues(parsed.error)} (is the daemon the same version as the SDK?)`);
  }
  return parsed.data as z.infer<S>;
}

/** A streamed 2xx body, and the function that turns a read failure into the right error. */
export interface StreamedBody {
  body: ReadableStream<Uint8Array>;
  fail: (e: unknown) => Error;
}

export class HttpClient {
  /** Where the plain HTTP/1.1 path sends requests (transport.ts); undefined for https and URLs it cannot take. */
  private readonly plain: PlainOrigin | undefined;
  /** The base URL's path, without a trailing slash (a daemon behind a proxy prefix). */
  private readonly basePath: string;

  constructor(readonly conn: ResolvedConnection) {
    const base = new URL(conn.apiUrl);
    this.plain = base.search || base.hash ? undefined : plainOrigin(base);
    this.basePath = base.pathname.replace(/\/+$/, '');
  }

  url(path: string, query?: RequestOptions['query']): string {
    return this.urlObject(path, query).toString();
  }

  private urlObject(path: string, query?: RequestOptions['query']): URL {
    const u = new URL(`${this.conn.apiUrl}/v1${path}`);
    if (Array.isArray(query)) {
      for (const [k, v] of query) u.searchParams.append(k, v);
    } else if (query) {
      for (const [k, v] of Object.entries(query)) if (v !== undefined) u.searchParams.set(k, String(v));
    }
    return u;
  }

  /**
   * Send one request and return the 2xx Response with its body unread.
   * `bodyTimed`: keep the timeout running while the caller reads the body
   * (call the returned `done()` once finished); otherwise it stops at the headers.
   */
  async send(
    method: string,
    path: string,
    opts: RequestOptions = {},
    bodyTimed = false,
  ): Promise<{ res: TransportResponse; done: () => void; fail: (e: unknown) => Error }> {
    const target = this.urlObject(path, opts.query);
    const url = target.toString();
    const what = `${method} ${path}`;
    const timeoutMs = opts.timeoutMs ?? this.conn.requestTimeoutMs;
    const timer = new AbortController();
    let timedOut = false;
    const handle =
      timeoutMs > 0
        ? setTimeout(() => {
            timedOut = true;
            timer.abort(clientTimeout(what, timeoutMs));
          }, timeoutMs)
        : undefined;
    const done = () => {
      if (handle) clearTimeout(handle);
    };
    const userSignals = [this.conn.signal, opts.signal].filter((s): s is AbortSignal => s !== undefined);
    const signal = userSignals.length ? AbortSignal.any([timer.signal, ...userSignals]) : timer.signal;

    const headers: Record<string, string> = { accept: 'application/json, application/x-ndjson, application/octet-stream' };
    if (this.conn.apiKey) headers.authorization = `Bearer ${this.conn.apiKey}`;
    let body: RequestBody | undefined;
    if (opts.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.json);
    } else if (opts.body !== undefined) {
      headers['content-type'] = opts.contentType ?? 'application/octet-stream';
      body = opts.body;
    }
    if (opts.headers) Object.assign(headers, opts.headers);

    const fail = (e: unknown) => this.translate(e, what, url, userSignals, timedOut, timeoutMs);
    let res: TransportResponse;
    try {
      signal.throwIfAborted();
      res = await sendRequest(target, { method, headers, body, signal });
    } catch (e) {
      done();
      throw fail(e);
    }
    if (res.status < 200 || res.status > 299) {
      try {
        throw await errorFromResponse(res, what);
      } finally {
        done();
      }
    }
    if (!bodyTimed) done();
    return { res, done, fail };
  }

  /** Map a fetch (or body read) failure to the error the caller should see. */
  translate(e: unknown, what: string, url: string, userSignals: AbortSignal[], timedOut: boolean, timeoutMs: number): Error {
    if (e instanceof CapsuleError) return e;
    const aborted = userSignals.find((s) => s.aborted);
    if (aborted) return abortError(aborted);
    if (timedOut) return clientTimeout(what, timeoutMs);
    const cause = e instanceof Error ? ((e.cause as Error | undefined)?.message ?? e.message) : String(e);
    const err = new UnavailableError(`cannot reach the Capsule daemon at ${url}: ${cause}; is it running? (start it with \`capsule serve\`, or set CAPSULE_URL)`);
    (err as { cause?: unknown }).cause = e;
    return err;
  }

  /**
   * A request with no body or a JSON one, on the plain HTTP/1.1 path (transport.ts): its answer read
   * whole, or the domain error for a non-2xx one. undefined: the plain path cannot take it (nothing was
   * sent, or a GET's answer it cannot frame); use the general path.
   */
  private async plainCall(method: string, path: string, opts: RequestOptions): Promise<{ text: string } | undefined> {
    if (!this.plain || opts.body !== undefined) return undefined;
    const what = `${method} ${path}`;
    const timeoutMs = opts.timeoutMs ?? this.conn.requestTimeoutMs;
    const userSignals = [this.conn.signal, opts.signal].filter((s): s is AbortSignal => s !== undefined);
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.conn.apiKey) headers.authorization = `Bearer ${this.conn.apiKey}`;
    let body: Buffer | undefined;
    if (opts.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = Buffer.from(JSON.stringify(opts.json), 'utf8');
    }
    let answer;
    try {
      answer = await plainRequest(this.plain, {
        method,
        target: this.target(path, opts.query),
        headers,
        body,
        maxBody: MAX_JSON_BYTES,
        signal: userSignals.length === 0 ? undefined : userSignals.length === 1 ? userSignals[0] : AbortSignal.any(userSignals),
        timeoutMs,
        onTimeout: () => clientTimeout(what, timeoutMs),
      });
    } catch (e) {
      throw this.translate(e, what, this.url(path, opts.query), userSignals, false, timeoutMs);
    }
    if (!answer) return undefined;
    const text = answer.body.toString('utf8');
    if (answer.status < 200 || answer.status > 299) throw errorFromText(answer.status, text.slice(0, MAX_ERROR_BODY_BYTES), what);
    return { text };
  }

  /** Path and query of a request, as sent on the wire. */
  private target(path: string, query?: RequestOptions['query']): string {
    let qs = '';
    if (Array.isArray(query)) {
      qs = new URLSearchParams(query).toString();
    } else if (query) {
      const params = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined) params.set(k, String(v));
      qs = params.toString();
    }
    return `${this.basePath}/v1${encodeURI(path).replace(/%25/g, '%')}${qs ? `?${qs}` : ''}`;
  }

  /**
   * A request whose 2xx answer is JSON matching `schema`. `fast`: a hand-written check of the common
   * shape that returns what the schema's parse would, or undefined to let the schema decide (schemas/fast.ts).
   */
  async json<S extends z.ZodType>(method: string, path: string, schema: S, opts: RequestOptions = {}, fast?: (v: unknown) => z.infer<S> | undefined): Promise<z.infer<S>> {
    const what = `${method} ${path}`;
    const plain = await this.plainCall(method, path, opts);
    if (plain) {
      let value: unknown;
      try {
        value = plain.text === '' ? undefined : JSON.parse(plain.text);
      } catch {
        throw new InternalError(`${what}: the daemon sent a body that is not JSON`);
      }
      return fast?.(value) ?? validateResponse(schema, value, what);
    }
    const { res, done, fail } = await this.send(method, path, opts, true);
    let value: unknown;
    try {
      const bytes = await readAll(res);
      const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');
      value = text === '' ? undefined : JSON.parse(text);
    } catch (e) {
      if (e instanceof SyntaxError) throw new InternalError(`${what}: the daemon sent a body that is not JSON`);
      throw fail(e);
    } finally {
      done();
    }
    return fast?.(value) ?? validateResponse(schema, value, what);
  }

  /** A request whose 2xx answer has no body worth reading (204). */
  async empty(method: string, path: string, opts: RequestOptions = {}): Promise<void> {
    if (await this.plainCall(method, path, opts)) return;
    const { res } = await this.send(method, path, opts);
    discard(res);
  }

  /** A request whose 2xx body the caller reads as a stream; the timeout covers only the headers. */
  async stream(method: string, path: string, opts: RequestOptions = {}): Promise<StreamedBody> {
    const { res, fail } = await this.send(method, path, opts);
    return { body: webStream(res), fail };
  }

  /** A request whose whole 2xx body is read as bytes, under the timeout. */
  async bytes(method: string, path: string, opts: RequestOptions = {}): Promise<Uint8Array> {
    const { res, done, fail } = await this.send(method, path, opts, true);
    try {
      return await readAll(res);
    } catch (e) {
      throw fail(e);
    } finally {
      done();
    }
  }
}
