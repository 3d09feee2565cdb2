/**
 * The Connect protocol with the JSON codec, as connect-es (the `e2b` SDK's RPC client) speaks it
 * over HTTP/1.1: unary calls are a JSON body in and out, errors a status and `{code, message}`;
 * server-streaming calls are enveloped messages (1 flag byte, 4 length bytes, JSON) ending with an
 * end-of-stream envelope (flag 0x02) that carries the error, if any. `Connect-Timeout-Ms` ends a
 * stream with `deadline_exceeded`; `Keepalive-Ping-Interval` (seconds, E2B's header) makes the
 * stream send its keepalive message that often.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Readable } from 'node:stream';
import type { ServerResponse } from 'node:http';
import type { z } from 'zod';
import { CONNECT_HTTP_STATUS, ConnectError, connectError, type ConnectCode } from './errors.js';

/** Largest request message accepted (requests are small: a path, a command line, some input). */
const MAX_REQUEST_BYTES = 16 * 1024 * 1024;
const FLAG_COMPRESSED = 0x01;
const FLAG_END_STREAM = 0x02;

export interface Logger {
  error(obj: unknown, msg?: string): void;
}

/** The message of a request, checked by its schema (a bad one is `invalid_argument`). */
function parseMessage<S extends z.ZodType>(schema: S, value: unknown): z.infer<S> {
  const r = schema.safeParse(value ?? {});
  if (!r.success) {
    const i = r.error.issues[0];
    throw new ConnectError('invalid_argument', `invalid request${i ? `: ${i.path.map(String).join('.')}${i.path.length ? ': ' : ''}${i.message}` : ''}`);
  }
  return r.data;
}

function errorBody(err: unknown, log: Logger, where: string): { code: ConnectCode; message: string } {
  const e = connectError(err);
  if (e) return e;
  log.error({ err }, `${where} failed`);
  return { code: 'internal', message: 'internal error; see the daemon log' };
}

/** A unary RPC: `handler` answers the message, or throws (CapsuleError or ConnectError). */
export function unary<S extends z.ZodType>(
  app: FastifyInstance,
  url: string,
  schema: S,
  handler: (msg: z.infer<S>, req: FastifyRequest) => Promise<object>,
): void {
  app.post(url, async (req, reply) => {
    try {
      if (req.body === undefined || req.body === null || typeof (req.body as Readable).pipe === 'function') {
        return await sendUnaryError(reply, { code: 'unimplemented', message: 'send Connect with the JSON codec (Content-Type: application/json)' }, 415);
      }
      const out = await handler(parseMessage(schema, req.body), req);
      return await reply.code(200).header('content-type', 'application/json').send(JSON.stringify(out));
    } catch (err) {
      return sendUnaryError(reply, errorBody(err, req.log, url));
    }
  });
}

function sendUnaryError(reply: FastifyReply, e: { code: ConnectCode; message: string }, status = CONNECT_HTTP_STATUS[e.code]): FastifyReply {
  return reply.code(status).header('content-type', 'application/json').send(JSON.stringify(e));
}

/** The server's side of one server-streaming call. */
export class StreamWriter<M> {
  private ended = false;
  private closed = false;
  private readonly onCloseListeners: Array<() => void> = [];

  constructor(private readonly res: ServerResponse) {
    res.writeHead(200, { 'content-type': 'application/connect+json', 'cache-control': 'no-store' });
    // Headers out now: the client's call starts when they arrive (the first message may be a while).
    res.flushHeaders();
    res.on('close', () => {
      if (this.closed) return;
      this.closed = true;
      if (!this.ended) for (const l of this.onCloseListeners) l();
    });
  }

  /** False when the client is not keeping up: wait for drained(). Messages after the end or a hang-up are dropped. */
  send(message: M): boolean {
    if (this.ended || this.closed) return true;
    return this.res.write(envelope(0, message));
  }

  drained(): Promise<void> {
    if (this.ended || this.closed || !this.res.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.res.off('drain', done);
        this.res.off('close', done);
        resolve();
      };
      this.res.on('drain', done);
      this.res.on('close', done);
    });
  }

  /** The end-of-stream message: success, or the error. Only the first end counts. */
  end(error?: { code: ConnectCode; message: string }): void {
    if (this.ended) return;
    this.ended = true;
    if (!this.closed) this.res.end(envelope(FLAG_END_STREAM, error ? { error } : {}));
  }

  get isOpen(): boolean {
    return !this.ended && !this.closed;
  }

  /** Called once if the client goes away before the end. */
  onClose(listener: () => void): void {
    this.onCloseListeners.push(listener);
  }
}

function envelope(flags: number, message: unknown): Buffer {
  const json = Buffer.from(JSON.stringify(message), 'utf8');
  const head = Buffer.alloc(5);
  head[0] = flags;
  head.writeUInt32BE(json.length, 1);
  return Buffer.concat([head, json]);
}

/** A server-streaming request's one message: enveloped (application/connect+json), or plain JSON. */
async function readRequestMessage(body: unknown): Promise<unknown> {
  if (body === undefined || body === null) return {};
  if (typeof (body as Readable).pipe !== 'function') return body;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as Readable) {
    size += (chunk as Buffer).length;
    if (size > MAX_REQUEST_BYTES + 5) throw new ConnectError('resource_exhausted', `request message larger than ${MAX_REQUEST_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  const buf = Buffer.concat(chunks);
  if (buf.length === 0) return {};
  if (buf.length < 5) throw new ConnectError('invalid_argument', 'truncated envelope');
  if (buf[0]! & FLAG_COMPRESSED) throw new ConnectError('unimplemented', 'compressed messages are not supported');
  const len = buf.readUInt32BE(1);
  if (buf.length < 5 + len) throw new ConnectError('invalid_argument', 'truncated envelope');
  try {
    return JSON.parse(buf.subarray(5, 5 + len).toString('utf8')) as unknown;
  } catch {
    throw new ConnectError('invalid_argument', 'the request message is not JSON');
  }
}

export interface StreamCall {
  req: FastifyRequest;
  /** Aborted when the client goes away or the call's deadline passes. */
  signal: AbortSignal;
}

/**
 * A server-streaming RPC. `handler` sends messages and returns when the stream is complete (or
 * throws: the error ends the stream). `keepalive` is the service's keepalive message.
 */
export function serverStream<S extends z.ZodType, M>(
  app: FastifyInstance,
  url: string,
  schema: S,
  keepalive: () => M,
  handler: (msg: z.infer<S>, stream: StreamWriter<M>, call: StreamCall) => Promise<void>,
): void {
  app.post(url, async (req, reply) => {
    reply.hijack();
    const stream = new StreamWriter<M>(reply.raw);
    const ac = new AbortController();
    stream.onClose(() => ac.abort());
    const timers: NodeJS.Timeout[] = [];
    const deadline = Number(req.headers['connect-timeout-ms']);
    if (Number.isFinite(deadline) && deadline > 0) {
      timers.push(
        setTimeout(() => {
          stream.end({ code: 'deadline_exceeded', message: `the call's deadline (${deadline} ms) passed` });
          ac.abort();
        }, Math.min(deadline, 2 ** 31 - 1)),
      );
    }
    const every = Number(req.headers['keepalive-ping-interval']);
    if (Number.isFinite(every) && every > 0) {
      const t = setInterval(() => stream.send(keepalive()), Math.max(1, every) * 1000);
      t.unref();
      timers.push(t);
    }
    try {
      const msg = parseMessage(schema, await readRequestMessage(req.body));
      await handler(msg, stream, { req, signal: ac.signal });
      stream.end();
    } catch (err) {
      stream.end(errorBody(err, req.log, url));
    } finally {
      for (const t of timers) clearTimeout(t);
    }
  });
}
