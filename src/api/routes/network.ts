/**
 * Networking routes: the policy, the egress ledger and port URLs (JSON, in the
 * route table and OpenAPI), and the port proxy itself (raw: any method, any
 * body, WebSocket upgrades), which takes port tokens instead of API keys.
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyInstance } from 'fastify';
import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import {
  NetworkConfig,
  NetworkLogQuery,
  NetworkLogResponse,
  PortAccess,
  PortParams,
  PortUrlQuery,
  SandboxNetwork,
  SandboxParams,
} from '../../schemas/index.js';
import { PortForwarder, portTarget } from '../../network/ports.js';
import { InvalidArgumentError } from '../../errors/index.js';
import { isRawUpload, takeRawUpload } from '../raw-upload.js';

export function networkRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/network',
    summary: "The sandbox's egress policy and public ports",
    tag: 'network',
    params: SandboxParams,
    responses: { 200: { description: 'Its network', schema: SandboxNetwork } },
    handler: async ({ params, ctx }) => s.network.get(ctx, params.id),
  });

  t.add({
    method: 'PUT',
    url: '/v1/sandboxes/:id/network',
    summary: 'Change the egress policy and/or public ports of a running sandbox; new connections follow it at once, and open ones it no longer allows are closed',
    tag: 'network',
    params: SandboxParams,
    body: NetworkConfig,
    responses: { 200: { description: 'Its network now', schema: SandboxNetwork } },
    errors: ['conflict', 'unsupported'],
    handler: async ({ params, body, ctx }) => s.network.set(ctx, params.id, body),
  });

  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/network/log',
    summary: "The sandbox's egress ledger: every outbound connection and DNS lookup, with verdict, rule and bytes; follow with since=<cursor>&waitMs=",
    tag: 'network',
    params: SandboxParams,
    query: NetworkLogQuery,
    responses: { 200: { description: 'Entries after `since`, oldest first', schema: NetworkLogResponse } },
    handler: async ({ params, query, ctx, req }) => {
      const ac = new AbortController();
      req.raw.once('close', () => ac.abort());
      return s.network.log(ctx, params.id, { ...query, signal: ac.signal });
    },
  });

  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/network/ports/:port',
    summary: 'URLs of a port inside the sandbox (host-routed and path-routed), its token and a signed URL',
    tag: 'network',
    params: PortParams,
    query: PortUrlQuery,
    responses: { 200: { description: 'How to reach the port', schema: PortAccess } },
    handler: async ({ params, query, ctx }) => s.network.portAccess(ctx, params.id, params.port, query.ttlMs),
  });
}

/**
 * The port proxy. It answers in onRequest, before fastify reads a body, so the
 * request body streams to the sandbox untouched. Upgrades (WebSocket) come
 * through the server's 'upgrade' event; other upgrade listeners (a future
 * WebSocket API) keep the requests that are not port requests. The same
 * dispatcher sends raw uploads (Upgrade: capsule-upload) to raw-upload.ts.
 */
export function registerPortProxy(app: FastifyInstance, s: Services): void {
  const forwarder = new PortForwarder(s.network);
  const handler = async (req: { url: string; raw: import('node:http').IncomingMessage }, reply: { hijack(): void; raw: import('node:http').ServerResponse }) => {
    // A WebSocket handshake delivered as a request belongs to the upgrade dispatcher below.
    if (req.raw.headers.upgrade) {
      reply.hijack();
      return;
    }
    // req.url is the path-routed form (host-routed requests were rewritten to it).
    const target = portTarget(req.raw, req.url);
    if (!target) throw new InvalidArgumentError('not a sandbox port URL: /v1/sandboxes/<id>/ports/<1-65535>/...');
    reply.hijack();
    forwarder.web(req.raw, reply.raw, target);
  };
  for (const url of ['/v1/sandboxes/:id/ports/:port', '/v1/sandboxes/:id/ports/:port/*']) {
    app.route({ method: ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'], url, onRequest: handler, handler: async () => undefined });
  }
  // One dispatcher for every upgrade: port requests go to the forwarder and nowhere else (the WebSocket
  // API's listener would route them through fastify as well, and answer them a second time); the rest go to
  // the listeners the other routes installed. Installed once the server is ready, after those listeners.
  app.addHook('onReady', async () => {
    const others = app.server.listeners('upgrade') as Array<(req: IncomingMessage, socket: Socket, head: Buffer) => void>;
    app.server.removeAllListeners('upgrade');
    app.server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      const target = portTarget(req);
      if (target) {
        forwarder.upgrade(req, socket, head, target);
        return;
      }
      if (isRawUpload(req)) {
        takeRawUpload(app, req, socket, head);
        return;
      }
      // Nobody else wants upgrades: answer instead of leaving the client hanging.
      if (others.length === 0) {
        socket.end('HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
        return;
      }
      for (const l of others) l.call(app.server, req, socket, head);
    });
  });
}
