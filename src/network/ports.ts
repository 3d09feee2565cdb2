/**
 * Port exposure: HTTP and WebSocket requests to a server listening inside a
 * sandbox, forwarded by the daemon (proxying by http-proxy-3; the connection to
 * the sandbox comes from NetworkService.openPort). Two URL forms reach it:
 *
 *   host-routed  http://<port>-<id>.localhost:<daemon port>/path   (browsers resolve *.localhost to loopback)
 *   path-routed  http://<daemon>/v1/sandboxes/<id>/ports/<port>/path
 *
 * A request needs the sandbox's port token (X-Capsule-Port-Token header; on the
 * host-routed form also under E2B's name, E2B-Traffic-Access-Token, since the E2B
 * front door hands the same token out as `trafficAccessToken`), a
 * signed `capsule_token` query parameter (then, for browsers, a cookie scoped to
 * that origin or path carries it on), or a public port. The token, the signed
 * parameter and the cookie never reach the sandbox. API keys are not accepted
 * here (port requests are not API requests), so an Authorization header is the
 * sandbox app's own and passes through untouched.
 */
import http from 'node:http';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { createProxyServer } from 'http-proxy-3';
import { isCapsuleError, HTTP_STATUS, UnauthenticatedError, NotFoundError, SandboxError, type CapsuleError } from '../errors/index.js';
import { SANDBOX_ID_RE } from '../schemas/common.js';
import { PORT_TOKEN_HEADER, PORT_TOKEN_PARAM, type NetworkService } from './service.js';

const PATH_RE = /^\/v1\/sandboxes\/(sbx-[a-z0-9]{12})\/ports\/(\d{1,5})(\/.*)?$/;
const HOST_RE = /^(\d{1,5})-(sbx-[a-z0-9]{12})\.localhost(?::\d+)?$/i;
const COOKIE = 'capsule_port_token';
/** E2B's header for the same token (`sandbox.getHost(port)` URLs are host-routed); see src/e2b, ADR 0014. */
export const E2B_TRAFFIC_HEADER = 'e2b-traffic-access-token';

export interface PortTarget {
  id: string;
  port: number;
  /** Path and query to send to the sandbox (without the capsule_token parameter). */
  path: string;
  hostRouted: boolean;
  /** Signed values presented in the query string or cookie. */
  signed: string[];
  /** The signed value from the query string, to turn into a cookie. */
  fromQuery: string | undefined;
}

/** The host-routed form rewritten to the path-routed one (fastify's rewriteUrl), or undefined when it is not one. */
export function hostRoutedUrl(req: http.IncomingMessage): string | undefined {
  const m = HOST_RE.exec(req.headers.host ?? '');
  if (!m) return undefined;
  return `/v1/sandboxes/${m[2]!.toLowerCase()}/ports/${m[1]}${req.url ?? '/'}`;
}

/** Whether a (possibly rewritten) URL path is a port request: these take port tokens, not API keys. */
export function isPortPath(url: string): boolean {
  return PATH_RE.test(url.split('?', 1)[0]!);
}

/** Which sandbox port a request is for, or null when it is not a port request. */
export function portTarget(req: http.IncomingMessage, url = req.url ?? '/'): PortTarget | null {
  const hostM = HOST_RE.exec(req.headers.host ?? '');
  let id: string;
  let port: number;
  let rest: string;
  if (hostM && !url.startsWith('/v1/sandboxes/')) {
    id = hostM[2]!.toLowerCase();
    port = Number(hostM[1]);
    rest = url;
  } else {
    const q = url.indexOf('?');
    const m = PATH_RE.exec(q >= 0 ? url.slice(0, q) : url);
    if (!m) return null;
    id = m[1]!;
    port = Number(m[2]);
    rest = (m[3] ?? '/') + (q >= 0 ? url.slice(q) : '');
  }
  if (!SANDBOX_ID_RE.test(id) || port < 1 || port > 65535) return null;
  const u = new URL(rest, 'http://x');
  const fromQuery = u.searchParams.get(PORT_TOKEN_PARAM) ?? undefined;
  u.searchParams.delete(PORT_TOKEN_PARAM);
  const signed = [...(fromQuery ? [fromQuery] : []), ...cookieValues(req.headers.cookie, COOKIE)];
  return { id, port, path: u.pathname + u.search, hostRouted: Boolean(hostM), signed, fromQuery };
}

function cookieValues(header: string | undefined, name: string): string[] {
  if (!header) return [];
  return header
    .split(';')
    .map((c) => c.trim())
    .filter((c) => c.startsWith(`${name}=`))
    .map((c) => c.slice(name.length + 1));
}

/** Request headers the sandbox must not see: our token and cookie. */
function scrub(req: http.IncomingMessage, t: PortTarget): void {
  delete req.headers[PORT_TOKEN_HEADER];
  if (t.hostRouted) delete req.headers[E2B_TRAFFIC_HEADER];
  const cookies = (req.headers.cookie ?? '')
    .split(';')
    .map((c) => c.trim())
    .filter((c) => c && !c.startsWith(`${COOKIE}=`));
  if (cookies.length) req.headers.cookie = cookies.join('; ');
  else delete req.headers.cookie;
  req.url = t.path;
}

export class PortForwarder {
  private readonly proxy = createProxyServer({ xfwd: true, ws: true, proxyTimeout: 0 });

  constructor(private readonly network: NetworkService) {
    // Errors are answered per request (the callbacks below); this keeps a stray one from throwing.
    this.proxy.on('error', () => undefined);
  }

  /** A connection to the sandbox's port for each request (no pooling: the sandbox's server decides keep-alive). */
  private agent(t: PortTarget): http.Agent {
    const net = this.network;
    const agent = new http.Agent({ keepAlive: false });
    (agent as unknown as { createConnection: unknown }).createConnection = (_o: unknown, cb: (err: Error | null, s?: Duplex) => void) => {
      net.openPort(t.id, t.port).then(
        (s) => {
          cb(null, s);
          // Handed over paused (no byte may be lost before the HTTP client listens); it listens now.
          s.resume();
        },
        (e: Error) => cb(e),
      );
      return undefined;
    };
    return agent;
  }

  private check(req: http.IncomingMessage, t: PortTarget): void {
    const header = req.headers[PORT_TOKEN_HEADER] ?? (t.hostRouted ? req.headers[E2B_TRAFFIC_HEADER] : undefined);
    if (!this.network.authorizePort(t.id, t.port, { header: typeof header === 'string' ? header : undefined, signed: t.signed })) {
      throw new UnauthenticatedError(
        `port ${t.port} of sandbox ${t.id} needs its token: the ${PORT_TOKEN_HEADER} header, a signed ${PORT_TOKEN_PARAM} parameter (GET /v1/sandboxes/${t.id}/network/ports/${t.port}), or a public port`,
      );
    }
  }

  /** Forward one HTTP request (the raw request and response of the daemon's server). */
  web(req: http.IncomingMessage, res: http.ServerResponse, t: PortTarget): void {
    try {
      this.check(req, t);
    } catch (e) {
      sendError(res, e as CapsuleError);
      return;
    }
    if (t.fromQuery) {
      // Browsers load a page's assets without the parameter: a cookie for this origin (or path) carries it.
      const where = t.hostRouted ? 'Path=/' : `Path=/v1/sandboxes/${t.id}/ports/${t.port}/`;
      res.setHeader('set-cookie', `${COOKIE}=${t.fromQuery}; ${where}; HttpOnly; SameSite=Lax`);
    }
    scrub(req, t);
    this.proxy.web(req, res, { target: `http://localhost:${t.port}`, agent: this.agent(t), headers: { host: `localhost:${t.port}` } }, (err) =>
      sendError(res, toCapsuleError(err, t)),
    );
  }

  /** Forward a WebSocket (any Upgrade) request: the handshake goes to the sandbox, then bytes both ways. */
  upgrade(req: http.IncomingMessage, socket: Socket, head: Buffer, t: PortTarget): void {
    try {
      this.check(req, t);
    } catch (e) {
      rejectUpgrade(socket, e as CapsuleError);
      return;
    }
    scrub(req, t);
    this.proxy.ws(req, socket, head, { target: `http://localhost:${t.port}`, agent: this.agent(t), headers: { host: `localhost:${t.port}` } }, (err) =>
      rejectUpgrade(socket, toCapsuleError(err, t)),
    );
  }
}

function toCapsuleError(err: Error, t: PortTarget): CapsuleError {
  if (isCapsuleError(err)) return err;
  return new SandboxError(`port ${t.port} of sandbox ${t.id}: ${err.message}`, { id: t.id, port: t.port });
}

function sendError(res: http.ServerResponse, e: CapsuleError): void {
  const err = isCapsuleError(e) ? e : new NotFoundError(String(e));
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(HTTP_STATUS[err.code], { 'content-type': 'application/json; charset=utf-8' });
  res.end(JSON.stringify(err.toJSON()));
}

function rejectUpgrade(socket: Socket, e: CapsuleError): void {
  if (socket.destroyed) return;
  const status = HTTP_STATUS[e.code] ?? 500;
  const body = JSON.stringify(e.toJSON());
  socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
}
