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
import { discard, readAll, readLimitedText, sendRequest, webStream, type RequestBody, type TransportResponse } from './transport.js';

export type QueryValue = string | number | boolean | undefined;

export interface RequestOptions {
  query?: Record<string, QueryValue> | Array<[string, string]>;
  /** Sent as JSON with content-type application/json. */
  json?: unknown;
  /** Sent as is (raw upload); a ReadableStream or Blob is streamed. */
  body?: RequestBody;
  contentType?: string;
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
function clientTimeout(what: string, timeoutMs: number): TimeoutError {
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
  try {
    const parsed = ErrorBody.safeParse(JSON.parse(text));
    if (parsed.success) {
      const { code, message, details } = parsed.data.error;
      return errorFromWire(code, message, details);
    }
  } catch {
    // Not JSON: a proxy or something else answered.
  }
  const code = STATUS_CODES[res.status] ?? 'internal';
  const snippet = text.trim().slice(0, ERROR_SNIPPET_CHARS);
  return errorFromWire(code, `${what} failed with HTTP ${res.status}${snippet ? `: ${snippet}` : ''}`, { status: res.status });
}

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
  constructor(readonly conn: ResolvedConnection) {}

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

  /** A request whose 2xx answer is JSON matching `schema`. */
  async json<S extends z.ZodType>(method: string, path: string, schema: S, opts: RequestOptions = {}): Promise<z.infer<S>> {
    const what = `${method} ${path}`;
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
    return validateResponse(schema, value, what);
  }

  /** A request whose 2xx answer has no body worth reading (204). */
  async empty(method: string, path: string, opts: RequestOptions = {}): Promise<void> {
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
