/**
 * MCP over Streamable HTTP at `/mcp` of the daemon's fastify server.
 *
 * One McpServer (SDK 1.x) per MCP session, connected to SessionTransport, a
 * small implementation of the SDK's Transport interface that lives in our
 * fastify routes. We do not use the SDK's StreamableHTTPServerTransport
 * because it answers every POST the same way (all SSE or all JSON); here
 * each POST gets what suits it:
 *
 *  - a tools/call that carries a progress token is answered with an SSE
 *    stream, so progress notifications reach the client while the command runs;
 *  - everything else is answered with one JSON body.
 *
 * Both are allowed by the spec (the client must accept either). GET opens the
 * session's stream for server-initiated messages; DELETE ends the session.
 * Resumption (Last-Event-ID) is not offered: events carry no ids.
 *
 * Before anything else every request passes the DNS-rebinding guard
 * (checkHostAndOrigin) and the owner hook (resolveOwner).
 */
import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ServerResponse } from 'node:http';
import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { Transport, TransportSendOptions } from '@modelcontextprotocol/sdk/shared/transport.js';
import {
  JSONRPCMessageSchema,
  SUPPORTED_PROTOCOL_VERSIONS,
  isInitializeRequest,
  isJSONRPCErrorResponse,
  isJSONRPCNotification,
  isJSONRPCRequest,
  isJSONRPCResultResponse,
  type JSONRPCMessage,
  type MessageExtraInfo,
  type RequestId,
} from '@modelcontextprotocol/sdk/types.js';
import type { Services } from '../api/services.js';
import { servicesBackend } from './backend.js';
import { ANONYMOUS_ADMIN, type Principal } from '../auth/principal.js';
import { createMcpServer, defaultMcpTemplate } from './server.js';
import { newSessionState } from './tools.js';

export const MCP_PATH = '/mcp';

/**
 * The auth hook: who is calling. The daemon's auth layer (api/auth.ts) has
 * already checked the API key for /mcp like any other route and put the
 * caller on the request; MCP scopes sandboxes by it exactly as REST does.
 */
export type PrincipalResolver = (req: FastifyRequest) => Principal;
export const resolvePrincipal: PrincipalResolver = (req) => req.principal ?? ANONYMOUS_ADMIN;

export interface McpHttpOptions {
  resolvePrincipal?: PrincipalResolver;
  /** Template for sandboxes created on demand; default CAPSULE_MCP_TEMPLATE, then debian. */
  defaultTemplate?: string;
  /** A session with no request or stream open for this long is closed; default 30 minutes. */
  sessionIdleMs?: number;
  maxSessions?: number;
}

const MAX_BODY = 16 * 1024 * 1024;
const KEEPALIVE_MS = 25_000;

// --- DNS-rebinding guard -----------------------------------------------------------

const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '[::1]']);

export function isLoopbackAddress(addr: string | undefined): boolean {
  if (!addr) return false;
  return addr === '::1' || addr.startsWith('127.') || addr.startsWith('::ffff:127.');
}

function hostAndPort(value: string): { hostname: string; port: string } | undefined {
  try {
    const u = new URL(`http://${value}`);
    // URL keeps brackets around IPv6 hostnames and drops a default port.
    return { hostname: u.hostname.toLowerCase(), port: u.port };
  } catch {
    return undefined;
  }
}

/**
 * Why a request must be refused (403), or undefined when it may pass.
 *
 * On a loopback listener the Host must name the loopback (localhost,
 * 127.0.0.1 or [::1]) with our port, and an Origin, when sent, must be a
 * loopback origin: a page on another site that rebinds its name to 127.0.0.1
 * fails both. On other listeners (names unknown to us) an Origin must match
 * the Host; authentication is what protects those.
 */
export function checkHostAndOrigin(headers: { host?: string | undefined; origin?: string | undefined }, local: { address?: string | undefined; port?: number | undefined }): string | undefined {
  const loopback = isLoopbackAddress(local.address);
  const host = headers.host ? hostAndPort(headers.host) : undefined;
  if (loopback) {
    const port = String(local.port ?? '');
    const portOk = host !== undefined && (host.port === port || (host.port === '' && port === '80'));
    if (!host || !LOOPBACK_NAMES.has(host.hostname) || !portOk) {
      return `Host header ${JSON.stringify(headers.host ?? '')} is not allowed: this server listens on the loopback and answers only localhost:${port}, 127.0.0.1:${port} or [::1]:${port}`;
    }
  }
  const origin = headers.origin;
  if (origin !== undefined) {
    let o: URL | undefined;
    try {
      o = new URL(origin);
    } catch {
      o = undefined;
    }
    const ok =
      o !== undefined &&
      (o.protocol === 'http:' || o.protocol === 'https:') &&
      (loopback ? LOOPBACK_NAMES.has(o.hostname.toLowerCase()) : host !== undefined && o.host.toLowerCase() === headers.host?.toLowerCase());
    if (!ok) return `Origin ${JSON.stringify(origin)} is not allowed: only pages served from this host may call it`;
  }
  return undefined;
}

// --- SSE and JSON-RPC helpers ------------------------------------------------------------

function jsonRpcError(raw: ServerResponse, status: number, code: number, message: string, extraHeaders: Record<string, string> = {}): void {
  const body = JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null });
  raw.writeHead(status, { 'content-type': 'application/json', ...extraHeaders });
  raw.end(body);
}

function sseFrame(msg: JSONRPCMessage): string {
  return `event: message\ndata: ${JSON.stringify(msg)}\n\n`;
}

function openSse(raw: ServerResponse, sessionId: string): void {
  raw.writeHead(200, {
    'content-type': 'text/event-stream',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    'mcp-session-id': sessionId,
  });
  raw.flushHeaders();
}

function accepts(req: FastifyRequest, type: string): boolean {
  const a = req.headers.accept;
  return a === undefined ? false : a.split(',').some((p) => {
    const t = p.split(';')[0]!.trim().toLowerCase();
    return t === type || t === '*/*';
  });
}

function isResponse(m: JSONRPCMessage): m is JSONRPCMessage & { id: RequestId } {
  return isJSONRPCResultResponse(m) || isJSONRPCErrorResponse(m);
}

// --- the transport ------------------------------------------------------------------

/** The HTTP exchange (one POST) that waits for the responses to some requests. */
class Exchange {
  private readonly waiting: Set<RequestId>;
  private readonly responses: JSONRPCMessage[] = [];
  private finished = false;
  readonly done: Promise<void>;
  private resolveDone!: () => void;

  constructor(
    ids: RequestId[],
    private readonly mode: 'json' | 'sse',
    private readonly raw: ServerResponse,
    private readonly sessionId: string,
    private readonly batch: boolean,
  ) {
    this.waiting = new Set(ids);
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
    if (mode === 'sse') openSse(raw, sessionId);
    raw.once('close', () => this.finish());
  }

  get ids(): RequestId[] {
    return [...this.waiting];
  }

  deliver(id: RequestId, msg: JSONRPCMessage): void {
    if (this.finished) return;
    const response = isResponse(msg);
    if (this.mode === 'sse') this.raw.write(sseFrame(msg));
    else if (response) this.responses.push(msg);
    // In JSON mode there is nowhere to put a notification about a request: it is dropped.
    if (response) this.settle(id);
  }

  /** The request will get no response (it was cancelled). */
  settle(id: RequestId): void {
    this.waiting.delete(id);
    if (this.waiting.size === 0) this.finish();
  }

  finish(): void {
    if (this.finished) return;
    this.finished = true;
    if (!this.raw.writableEnded && !this.raw.destroyed) {
      if (this.mode === 'sse') this.raw.end();
      else if (this.responses.length === 0) {
        this.raw.writeHead(202, { 'mcp-session-id': this.sessionId });
        this.raw.end();
      } else {
        const body = JSON.stringify(this.batch ? this.responses : this.responses[0]);
        this.raw.writeHead(200, { 'content-type': 'application/json', 'mcp-session-id': this.sessionId });
        this.raw.end(body);
      }
    }
    this.resolveDone();
  }
}

export class SessionTransport implements Transport {
  onclose?: (() => void) | undefined;
  onerror?: ((error: Error) => void) | undefined;
  onmessage?: ((message: JSONRPCMessage, extra?: MessageExtraInfo) => void) | undefined;
  private readonly byRequest = new Map<RequestId, Exchange>();
  private standalone: { raw: ServerResponse; timer: NodeJS.Timeout } | undefined;
  private closed = false;
  /** Requests and streams open now; an idle session may be swept. */
  busy = 0;

  constructor(readonly sessionId: string) {}

  async start(): Promise<void> {}

  async send(message: JSONRPCMessage, options?: TransportSendOptions): Promise<void> {
    const id = isResponse(message) ? message.id : options?.relatedRequestId;
    if (id === undefined) {
      // Server-initiated: the GET stream if the client opened one, otherwise it is dropped.
      const s = this.standalone;
      if (s && !s.raw.writableEnded) s.raw.write(sseFrame(message));
      return;
    }
    const ex = this.byRequest.get(id);
    if (!ex) return; // the client went away or cancelled
    if (isResponse(message)) this.byRequest.delete(id);
    ex.deliver(id, message);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const exchanges = new Set(this.byRequest.values());
    this.byRequest.clear();
    for (const ex of exchanges) ex.finish();
    this.closeStandalone();
    this.onclose?.();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Hand a POST's messages to the server; resolves once its HTTP response is complete. */
  async handlePost(messages: JSONRPCMessage[], batch: boolean, req: FastifyRequest, raw: ServerResponse): Promise<void> {
    const requests = messages.filter(isJSONRPCRequest);
    const extra: MessageExtraInfo = { requestInfo: { headers: req.headers as Record<string, string | string[] | undefined> } };
    if (requests.length === 0) {
      for (const m of messages) this.dispatch(m, extra);
      raw.writeHead(202, { 'mcp-session-id': this.sessionId });
      raw.end();
      return;
    }
    const wantsProgress = requests.some((r) => r.method === 'tools/call' && (r.params as { _meta?: { progressToken?: unknown } } | undefined)?._meta?.progressToken !== undefined);
    const mode = wantsProgress && accepts(req, 'text/event-stream') ? 'sse' : 'json';
    const ex = new Exchange(
      requests.map((r) => r.id),
      mode,
      raw,
      this.sessionId,
      batch,
    );
    for (const r of requests) this.byRequest.set(r.id, ex);
    raw.once('close', () => {
      // The client hung up: its responses have nowhere to go (the requests themselves go on).
      for (const id of ex.ids) if (this.byRequest.get(id) === ex) this.byRequest.delete(id);
    });
    this.busy++;
    try {
      for (const m of messages) this.dispatch(m, extra);
      await ex.done;
    } finally {
      this.busy--;
    }
  }

  private dispatch(m: JSONRPCMessage, extra: MessageExtraInfo): void {
    this.onmessage?.(m, extra);
    // A cancelled request gets no response (the SDK sends none): release its HTTP exchange.
    if (isJSONRPCNotification(m) && m.method === 'notifications/cancelled') {
      const id = (m.params as { requestId?: RequestId } | undefined)?.requestId;
      if (id !== undefined) {
        const ex = this.byRequest.get(id);
        this.byRequest.delete(id);
        ex?.settle(id);
      }
    }
  }

  /** GET: the stream for messages the server sends on its own. Resolves when it closes. */
  async openStandalone(raw: ServerResponse): Promise<boolean> {
    if (this.standalone && !this.standalone.raw.writableEnded) return false;
    openSse(raw, this.sessionId);
    const timer = setInterval(() => raw.write(': keep-alive\n\n'), KEEPALIVE_MS);
    timer.unref();
    this.standalone = { raw, timer };
    this.busy++;
    await new Promise<void>((resolve) => raw.once('close', () => resolve()));
    clearInterval(timer);
    if (this.standalone?.raw === raw) this.standalone = undefined;
    this.busy--;
    return true;
  }

  private closeStandalone(): void {
    const s = this.standalone;
    this.standalone = undefined;
    if (s) {
      clearInterval(s.timer);
      s.raw.end();
    }
  }
}

// --- routes ------------------------------------------------------------------------

interface Session {
  id: string;
  /** The API key (or 'anonymous' without auth) the session belongs to: no other key may use it. */
  owner: string | null;
  server: McpServer;
  transport: SessionTransport;
  lastSeen: number;
}

/** Serve MCP at /mcp on the daemon's fastify app. */
export function registerMcpRoutes(app: FastifyInstance, services: Services, opts: McpHttpOptions = {}): void {
  const principalOf = opts.resolvePrincipal ?? resolvePrincipal;
  const principals = new WeakMap<FastifyRequest, Principal>();
  const ownerOf = (req: FastifyRequest): string => {
    const p = principalOf(req);
    principals.set(req, p);
    return p.keyId ?? 'anonymous';
  };
  const defaultTemplate = defaultMcpTemplate(opts.defaultTemplate);
  const idleMs = opts.sessionIdleMs ?? 30 * 60_000;
  const maxSessions = opts.maxSessions ?? 1000;
  const sessions = new Map<string, Session>();

  const endSession = async (s: Session) => {
    sessions.delete(s.id);
    await s.server.close().catch(() => undefined);
    await s.transport.close();
  };
  const sweeper = setInterval(() => {
    const now = Date.now();
    for (const s of sessions.values()) if (s.transport.busy === 0 && now - s.lastSeen > idleMs) void endSession(s);
  }, Math.min(idleMs, 60_000));
  sweeper.unref();

  const newSession = async (owner: string | null, log: FastifyRequest['log'], principal: Principal): Promise<Session> => {
    const id = randomUUID();
    const server = createMcpServer({
      backend: servicesBackend(services, principal),
      defaultTemplate,
      version: services.version,
      session: newSessionState(),
      onUnexpectedError: (err, where) => log.error({ err, where, session: id }, 'MCP call failed unexpectedly'),
    });
    const transport = new SessionTransport(id);
    await server.connect(transport);
    const s: Session = { id, owner, server, transport, lastSeen: Date.now() };
    sessions.set(id, s);
    return s;
  };

  /** The session a request names; answers the error itself and returns undefined when there is none. */
  const findSession = (req: FastifyRequest, raw: ServerResponse, owner: string | null): Session | undefined => {
    const header = req.headers['mcp-session-id'];
    const id = Array.isArray(header) ? header[0] : header;
    if (!id) {
      jsonRpcError(raw, 400, -32000, 'Bad Request: Mcp-Session-Id header is required (send initialize first)');
      return undefined;
    }
    const s = sessions.get(id);
    if (!s || s.transport.isClosed || s.owner !== owner) {
      jsonRpcError(raw, 404, -32001, 'Session not found: it ended or expired; initialize a new one');
      return undefined;
    }
    const version = req.headers['mcp-protocol-version'];
    if (typeof version === 'string' && !SUPPORTED_PROTOCOL_VERSIONS.includes(version)) {
      jsonRpcError(raw, 400, -32000, `Bad Request: unsupported MCP-Protocol-Version ${version} (supported: ${SUPPORTED_PROTOCOL_VERSIONS.join(', ')})`);
      return undefined;
    }
    s.lastSeen = Date.now();
    return s;
  };

  const handle = async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    reply.hijack();
    const raw = reply.raw;
    try {
      const refused = checkHostAndOrigin(
        { host: req.headers.host, origin: typeof req.headers.origin === 'string' ? req.headers.origin : undefined },
        { address: req.socket.localAddress, port: req.socket.localPort },
      );
      if (refused) {
        req.log.warn({ host: req.headers.host, origin: req.headers.origin }, 'MCP request refused (DNS rebinding guard)');
        return jsonRpcError(raw, 403, -32000, `Forbidden: ${refused}`);
      }
      const owner = ownerOf(req);

      if (req.method === 'POST') return await post(req, raw, owner);
      if (req.method === 'GET') {
        if (!accepts(req, 'text/event-stream')) return jsonRpcError(raw, 406, -32000, 'Not Acceptable: a GET must accept text/event-stream');
        const s = findSession(req, raw, owner);
        if (!s) return;
        if (!(await s.transport.openStandalone(raw))) {
          jsonRpcError(raw, 409, -32000, 'Conflict: this session already has a GET stream open');
        }
        s.lastSeen = Date.now();
        return;
      }
      if (req.method === 'DELETE') {
        const s = findSession(req, raw, owner);
        if (!s) return;
        await endSession(s);
        raw.writeHead(200).end();
        return;
      }
      return jsonRpcError(raw, 405, -32000, 'Method Not Allowed: use POST, GET or DELETE', { allow: 'POST, GET, DELETE' });
    } catch (err) {
      req.log.error({ err }, 'MCP request failed');
      if (!raw.headersSent) jsonRpcError(raw, 500, -32603, 'Internal error; see the daemon log');
      else raw.end();
    }
  };

  const post = async (req: FastifyRequest, raw: ServerResponse, owner: string | null): Promise<void> => {
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json' || typeof req.body !== 'string') {
      return jsonRpcError(raw, 415, -32000, 'Unsupported Media Type: send application/json');
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(req.body);
    } catch {
      return jsonRpcError(raw, 400, -32700, 'Parse error: the body is not valid JSON');
    }
    const batch = Array.isArray(parsed);
    const items = batch ? (parsed as unknown[]) : [parsed];
    const messages: JSONRPCMessage[] = [];
    for (const item of items) {
      const r = JSONRPCMessageSchema.safeParse(item);
      if (!r.success) return jsonRpcError(raw, 400, -32600, 'Invalid Request: not a JSON-RPC 2.0 message');
      messages.push(r.data);
    }
    if (messages.length === 0) return jsonRpcError(raw, 400, -32600, 'Invalid Request: empty batch');

    const init = messages.some(isInitializeRequest);
    let s: Session | undefined;
    if (init) {
      if (req.headers['mcp-session-id']) return jsonRpcError(raw, 400, -32600, 'Invalid Request: this session is already initialized');
      if (messages.length > 1) return jsonRpcError(raw, 400, -32600, 'Invalid Request: initialize must be sent alone');
      if (sessions.size >= maxSessions) return jsonRpcError(raw, 503, -32000, `Service Unavailable: too many MCP sessions (${maxSessions}); close some with DELETE`);
      s = await newSession(owner, req.log, principals.get(req) ?? principalOf(req));
    } else {
      s = findSession(req, raw, owner);
      if (!s) return;
    }
    await s.transport.handlePost(messages, batch, req, raw);
    s.lastSeen = Date.now();
  };

  void app.register(async (scope) => {
    // Our own body handling: the raw JSON text, so that bad JSON becomes a JSON-RPC parse error.
    scope.removeContentTypeParser('application/json');
    scope.addContentTypeParser('application/json', { parseAs: 'string', bodyLimit: MAX_BODY }, (_req, body, done) => done(null, body));
    scope.route({ method: ['GET', 'POST', 'DELETE', 'PUT', 'PATCH'], url: MCP_PATH, handler: handle });
    // Open streams would keep the server from closing.
    scope.addHook('preClose', async () => {
      clearInterval(sweeper);
      await Promise.all([...sessions.values()].map(endSession));
    });
  });
}
