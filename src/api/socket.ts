/**
 * WebSocket routes, in one place: the upgrade, authentication (the same
 * onRequest hook as every HTTP call checks the key before the upgrade), and
 * error mapping. Terminals, process connections and file watches use it;
 * port forwarding will too.
 *
 * A socket route's `socket` function (RouteSpec) runs before the upgrade
 * with validated params and query and the caller's RequestContext. It does
 * the lookups that can fail (no such sandbox or process, wrong state, an
 * agent without the feature), so those failures are ordinary HTTP answers
 * with the usual JSON body and status, never a socket that opens and closes.
 * It returns a session: what runs on the upgraded socket, and optionally what
 * a plain HTTP request to the same URL gets (a watch's NDJSON stream).
 *
 * After the upgrade, an error is a text frame `{"type":"error","error":{code,
 * message}}` followed by a close with code 4000 + the HTTP status of that
 * error code (4404 not_found, 4409 conflict, 4500 internal, ...).
 */
import websocket from '@fastify/websocket';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { WebSocket } from 'ws';
import { HTTP_STATUS, InternalError, InvalidArgumentError, isCapsuleError } from '../errors/index.js';
import type { AnyRoute } from './route.js';

/** What an accepted request runs. */
export interface SocketSession {
  /** Runs the session on the upgraded socket. */
  socket(ws: SocketChannel): void;
  /** A plain HTTP request to the same URL; absent: the URL takes WebSocket upgrades only (400). */
  http?(reply: FastifyReply): Promise<void>;
  /** Neither ran (the request failed between the check and the upgrade): release what the check took. */
  cancel(): void;
}

/** Largest message a client may send (keystrokes, stdin chunks, control messages). */
export const MAX_CLIENT_MESSAGE = 1024 * 1024;
/** Output waits (the producer is paused) while more than this is queued on a socket. */
const HIGH_WATER = 1024 * 1024;
const LOW_WATER = 256 * 1024;

/**
 * A server-side WebSocket as the routes use it: JSON text frames for control, binary frames for bytes,
 * back-pressure (`send*` answers false above the high-water mark; `drained()` waits), and error closes.
 */
export class SocketChannel {
  private queued = 0;
  private waiters: Array<() => void> = [];
  private closedFlag = false;
  private readonly closeListeners: Array<() => void> = [];

  constructor(readonly ws: WebSocket) {
    ws.on('close', () => {
      this.closedFlag = true;
      this.wake();
      for (const l of this.closeListeners.splice(0)) l();
    });
    // A client that drops uncleanly is a close, not a daemon error.
    ws.on('error', () => undefined);
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  onClose(l: () => void): void {
    if (this.closedFlag) queueMicrotask(l);
    else this.closeListeners.push(l);
  }

  /** Client messages: text frames parsed as JSON (undefined when not JSON), binary frames as bytes. */
  onMessage(l: (msg: { text: unknown } | { bytes: Buffer }) => void): void {
    this.ws.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
      const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
      if (isBinary) return l({ bytes: buf });
      let text: unknown;
      try {
        text = JSON.parse(buf.toString('utf8'));
      } catch {
        text = undefined;
      }
      l({ text });
    });
  }

  sendJson(v: unknown): boolean {
    return this.send(JSON.stringify(v), false);
  }

  sendBytes(b: Buffer): boolean {
    return this.send(b, true);
  }

  /** Resolves once the queued output fell below the low-water mark, or the socket closed. */
  drained(): Promise<void> {
    if (this.closedFlag || this.queued <= LOW_WATER) return Promise.resolve();
    return new Promise((r) => this.waiters.push(r));
  }

  /** An error after the upgrade: say what it was, then close with 4000 + its HTTP status. */
  fail(err: unknown): void {
    const e = isCapsuleError(err) ? err : new InternalError('internal error; see the daemon log');
    this.sendJson({ type: 'error', error: { code: e.code, message: e.message } });
    this.close(4000 + HTTP_STATUS[e.code], e.code);
  }

  close(code = 1000, reason = ''): void {
    if (this.closedFlag) return;
    this.ws.close(code, reason.slice(0, 120));
  }

  private send(data: string | Buffer, binary: boolean): boolean {
    if (this.closedFlag || this.ws.readyState !== this.ws.OPEN) return true;
    const n = typeof data === 'string' ? Buffer.byteLength(data) : data.length;
    this.queued += n;
    this.ws.send(data, { binary }, () => {
      this.queued -= n;
      if (this.queued <= LOW_WATER) this.wake();
    });
    return this.queued <= HIGH_WATER;
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
}

const sessions = new WeakMap<FastifyRequest, SocketSession>();

/**
 * Registers the socket routes in a child context that has the WebSocket plugin (its route hook must see
 * them). The parent's onRequest hook (authentication) and error handler apply as to any route.
 */
export function registerSocketRoutes(
  app: FastifyInstance,
  routes: AnyRoute[],
  args: (r: AnyRoute, req: FastifyRequest) => { params: unknown; query: unknown; ctx: import('../auth/context.js').RequestContext; req: FastifyRequest },
): void {
  if (routes.length === 0) return;
  app.register(async (child) => {
    await child.register(websocket, { options: { maxPayload: MAX_CLIENT_MESSAGE } });
    for (const r of routes) {
      child.route({
        method: 'GET',
        url: r.url,
        // Before the upgrade: validation and lookups answer as HTTP errors.
        preHandler: async (req) => {
          const session = await r.socket!(args(r, req) as never);
          sessions.set(req, session);
        },
        handler: async (req, reply) => {
          const session = sessions.get(req);
          if (!session) throw new InternalError('socket route without a session');
          if (!session.http) {
            session.cancel();
            throw new InvalidArgumentError(`${r.url} is a WebSocket endpoint: connect with an Upgrade: websocket request`);
          }
          await session.http(reply);
          return reply;
        },
        wsHandler: (ws: WebSocket, req: FastifyRequest) => {
          const session = sessions.get(req);
          const ch = new SocketChannel(ws);
          if (!session) return ch.fail(new InternalError('socket route without a session'));
          try {
            session.socket(ch);
          } catch (err) {
            session.cancel();
            req.log.error({ err }, 'socket session failed');
            ch.fail(err);
          }
        },
      });
    }
  });
}

