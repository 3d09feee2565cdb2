/**
 * WebSockets to the daemon (terminals, process connections, watches), through
 * the `ws` package (Node 20 has no WebSocket client of its own). Authenticated
 * like every request; an answer that refuses the upgrade becomes the same
 * typed error a plain request would get.
 */
import type net from 'node:net';
import WebSocket from 'ws';
import { UnavailableError, errorFromWire } from '../errors/index.js';
import { abortError, errorFromText, type HttpClient, type QueryValue } from './http.js';

/** A refused upgrade's body is an error document: read at most this much of it. */
const MAX_ERROR_BODY = 64 * 1024;
/** Largest message accepted from the daemon (an output chunk is at most 1 MiB). */
const MAX_MESSAGE = 8 * 1024 * 1024;

export type SocketMessageListener = (data: Buffer, isBinary: boolean) => void;

/** An open socket. Messages are held from the start until `onMessage` takes them, so none is lost in between. */
export interface OpenSocket {
  ws: WebSocket;
  /** The TCP socket under it (to unref while idle). */
  raw: net.Socket | undefined;
  onMessage(l: SocketMessageListener): void;
}

/**
 * Open a WebSocket to `path` (under /v1); resolves once it is open. The daemon may send its first
 * message in the same packet as the upgrade's answer, before the caller had a turn to listen: every
 * message is held from the very start and handed to the listener given to `onMessage`.
 */
export function openSocket(
  http: HttpClient,
  path: string,
  query?: Record<string, QueryValue>,
  signal?: AbortSignal,
  opts: { maxPayload?: number; timeoutMs?: number } = {},
): Promise<OpenSocket> {
  const url = http.url(path, query).replace(/^http/, 'ws');
  const what = `GET ${path} (WebSocket)`;
  const headers: Record<string, string> = {};
  if (http.conn.apiKey) headers.authorization = `Bearer ${http.conn.apiKey}`;
  return new Promise<OpenSocket>((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const ws = new WebSocket(url, {
      headers,
      maxPayload: opts.maxPayload ?? MAX_MESSAGE,
      perMessageDeflate: false,
      ...(opts.timeoutMs ? { handshakeTimeout: opts.timeoutMs } : {}),
    });
    let raw: net.Socket | undefined;
    ws.once('upgrade', (res) => {
      raw = res.socket;
    });
    let held: Array<[Buffer, boolean]> | null = [];
    let listener: SocketMessageListener | undefined;
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (listener) listener(data, isBinary);
      else held?.push([data, isBinary]);
    });
    const opened: OpenSocket = {
      ws,
      get raw() {
        return raw;
      },
      onMessage(l) {
        listener = l;
        const early = held ?? [];
        held = null;
        for (const [d, b] of early) l(d, b);
      },
    };
    let settled = false;
    const settle = (err: Error | null) => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener('abort', onAbort);
      if (err) {
        ws.removeAllListeners();
        ws.on('error', () => undefined);
        ws.terminate();
        reject(err);
      } else {
        resolve(opened);
      }
    };
    const onAbort = () => settle(abortError(signal));
    signal?.addEventListener('abort', onAbort, { once: true });
    ws.once('open', () => settle(null));
    ws.once('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        if (size < MAX_ERROR_BODY) chunks.push(c);
        size += c.length;
      });
      res.on('end', () => settle(errorFromText(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8').slice(0, MAX_ERROR_BODY), what)));
      res.on('error', () => settle(errorFromText(res.statusCode ?? 0, '', what)));
    });
    ws.once('error', (e) => settle(new UnavailableError(`cannot reach the Capsule daemon at ${url}: ${e.message}; is it running?`)));
  });
}

/** The error a socket's `{"type":"error"}` message carries. */
export function socketError(msg: { error: { code: string; message: string } }): Error {
  return errorFromWire(msg.error.code, msg.error.message);
}

/** A daemon's socket closed without saying why (no exit, no error message). */
export function lostSocket(what: string, code: number): Error {
  return new UnavailableError(`${what}: the connection to the daemon closed (code ${code}) before the end`);
}

/** Text messages of a socket as a byte stream of NDJSON lines, so NDJSON readers serve both transports. */
export function socketLines(sock: OpenSocket): ReadableStream<Uint8Array> {
  const ws = sock.ws;
  return new ReadableStream<Uint8Array>({
    start(controller) {
      sock.onMessage((data, isBinary) => {
        if (isBinary) return;
        controller.enqueue(new Uint8Array(Buffer.concat([data, Buffer.from('\n')])));
      });
      ws.on('close', () => {
        try {
          controller.close();
        } catch {
          /* already cancelled */
        }
      });
      ws.on('error', () => undefined);
    },
    cancel() {
      ws.close();
    },
  });
}

/** Send and resolve once the data left (or reject when the socket is gone). */
export function sendOn(ws: WebSocket, data: Buffer | string, binary: boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    if (ws.readyState !== WebSocket.OPEN) return reject(new UnavailableError('the connection to the daemon is closed'));
    ws.send(data, { binary }, (err) => (err ? reject(new UnavailableError(`sending to the daemon failed: ${err.message}`)) : resolve()));
  });
}
