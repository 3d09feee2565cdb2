/**
 * MCP over Streamable HTTP at `/mcp` of the daemon's fastify server, both
 * protocol eras on the one path:
 *
 *  - 2025-era clients (2025-11-25 and older) open a session with
 *    `initialize`; each session is one McpServer connected to a
 *    SessionTransport (session.ts): JSON or SSE per POST, a GET stream,
 *    resumption with `Last-Event-ID`, DELETE to end it.
 *  - 2026-07-28 clients send self-contained POSTs carrying the per-request
 *    envelope; StatelessMcp (stateless.ts) serves each with a fresh server.
 *
 * The SDK's isLegacyRequest tells the two apart (a POST with the envelope is
 * modern; everything else, including every GET and DELETE, is 2025-era).
 * Before anything else every request passes the DNS-rebinding guard
 * (checkHostAndOrigin) and the auth hook (resolvePrincipal).
 */
import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ServerResponse } from 'node:http';
import {
  SUPPORTED_PROTOCOL_VERSIONS,
  isInitializeRequest,
  parseJSONRPCMessage,
  type JSONRPCMessage,
  type McpServer,
} from '@modelcontextprotocol/server';
import type { Services } from '../api/services.js';
import { servicesBackend } from './backend.js';
import { ANONYMOUS_ADMIN, type Principal } from '../auth/principal.js';
import type { ReplayLimits } from './replay.js';
import { createMcpServer, defaultMcpTemplate } from './server.js';
import { SessionTransport } from './session.js';
import { StatelessMcp } from './stateless.js';
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
  /** Bounds of each session's SSE replay buffer; defaults in replay.ts. */
  replay?: ReplayLimits;
}

const MAX_BODY = 16 * 1024 * 1024;

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

// --- JSON-RPC helpers ------------------------------------------------------------

function jsonRpcError(raw: ServerResponse, status: number, code: number, message: string, extraHeaders: Record<string, string> = {}): void {
  const body = JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null });
  raw.writeHead(status, { 'content-type': 'application/json', ...extraHeaders });
  raw.end(body);
}

function accepts(req: FastifyRequest, type: string): boolean {
  const a = req.headers.accept;
  return a === undefined ? false : a.split(',').some((p) => {
    const t = p.split(';')[0]!.trim().toLowerCase();
    return t === type || t === '*/*';
  });
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
  const stateless = new StatelessMcp({
    backendFor: (principal) => servicesBackend(services, principal),
    defaultTemplate,
    version: services.version,
    onUnexpectedError: (err, where) => app.log.error({ err, where }, 'MCP call failed unexpectedly'),
    onRejected: (err) => app.log.debug({ err: err.message }, 'MCP request rejected'),
  });

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
    const transport = new SessionTransport(id, opts.replay);
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
        const last = req.headers['last-event-id'];
        if (typeof last === 'string' && last !== '') {
          if (!(await s.transport.resume(last, raw))) {
            jsonRpcError(raw, 404, -32000, `Not Found: nothing to resume after event ${JSON.stringify(last.slice(0, 64))} (unknown id, or the stream ended)`);
          }
          s.lastSeen = Date.now();
          return;
        }
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
      try {
        messages.push(parseJSONRPCMessage(item));
      } catch {
        return jsonRpcError(raw, 400, -32600, 'Invalid Request: not a JSON-RPC 2.0 message');
      }
    }
    if (messages.length === 0) return jsonRpcError(raw, 400, -32600, 'Invalid Request: empty batch');

    const url = `http://${req.headers.host ?? 'localhost'}${req.url}`;
    if (await StatelessMcp.isModern(url, req.headers, parsed)) {
      return stateless.serve(url, req.headers, req.body, parsed, principals.get(req) ?? principalOf(req), raw);
    }

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
    await s.transport.handlePost(messages, batch, accepts(req, 'text/event-stream'), raw);
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
      await stateless.close();
    });
  });
}
