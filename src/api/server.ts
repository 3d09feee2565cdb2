/**
 * The HTTP transport: fastify with our routes, the OpenAPI document, and the
 * one place where errors become HTTP statuses and JSON bodies.
 */
import Fastify, { LogController, type FastifyInstance, type FastifyError } from 'fastify';
import type { Logger } from 'pino';
import { CapsuleError, HTTP_STATUS, InternalError, NotFoundError, isCapsuleError } from '../errors/index.js';
import { RouteTable } from './route.js';
import { buildOpenApi } from './openapi.js';
import type { Services } from './services.js';
import { sandboxRoutes, HealthResponse } from './routes/sandboxes.js';
import { volumeRoutes } from './routes/volumes.js';
import { snapshotRoutes } from './routes/snapshots.js';
import { commandRoutes, commandSocketRoutes } from './routes/commands.js';
import { channelRoutes } from './routes/channel.js';
import { ptyRoutes } from './routes/pty.js';
import { watchRoutes } from './routes/watch.js';
import { metricsRoutes, PROMETHEUS_PATH } from './routes/metrics.js';
import { codeRoutes } from './routes/code.js';
import { fileRoutes } from './routes/files.js';
import { templateRoutes } from './routes/templates.js';
import { keyRoutes } from './routes/keys.js';
import { infoRoutes } from './routes/info.js';
import { networkRoutes, registerPortProxy } from './routes/network.js';
import { hostRoutedUrl } from '../network/ports.js';
import { installAuth } from './auth.js';
import { registerMcpRoutes } from '../mcp/http.js';
import { e2bRoutedUrl, registerE2b } from '../e2b/index.js';

/** JSON bodies are small (stdin for a command at most 8 MiB); files are streamed and not counted here. */
const JSON_BODY_LIMIT = 16 * 1024 * 1024;

export function buildServer(services: Services, logger: Logger | boolean = false): FastifyInstance {
  const app = Fastify({
    loggerInstance: typeof logger === 'boolean' ? undefined : logger,
    logger: typeof logger === 'boolean' ? logger : undefined,
    bodyLimit: JSON_BODY_LIMIT,
    routerOptions: { maxParamLength: 512 },
    // One line per request is noise for a sandbox API; errors are logged by the error handler.
    logController: new LogController({ disableRequestLogging: true }),
    // http://<port>-<id>.localhost:<daemon port>/x is the path-routed /v1/sandboxes/<id>/ports/<port>/x (src/network/ports.ts);
    // E2B's in-sandbox requests (E2b-Sandbox-Id header, or its ports' host names) go to the E2B adapter (src/e2b/routing.ts).
    rewriteUrl: (req: import('node:http').IncomingMessage) => e2bRoutedUrl(req) ?? hostRoutedUrl(req) ?? req.url ?? '/',
  } as never) as unknown as FastifyInstance;

  // Raw bodies (file uploads) reach the handler as the request stream itself.
  app.addContentTypeParser('application/octet-stream', { bodyLimit: Number.MAX_SAFE_INTEGER }, (_req, payload, done) => done(null, payload));
  app.addContentTypeParser('*', { bodyLimit: Number.MAX_SAFE_INTEGER }, (_req, payload, done) => done(null, payload));

  installAuth(app, { keys: services.keyStore, limiter: services.limiter, open: services.metricsOpen ? [PROMETHEUS_PATH] : [] });

  const table = new RouteTable();
  table.add({
    method: 'GET',
    url: '/v1/health',
    summary: 'Liveness check (no authentication)',
    tag: 'meta',
    responses: { 200: { description: 'The daemon answers', schema: HealthResponse } },
    handler: async () => ({ status: 'ok', version: services.version }),
  });
  infoRoutes(table, services);
  sandboxRoutes(table, services);
  commandRoutes(table, services);
  commandSocketRoutes(table, services);
  channelRoutes(table, services);
  ptyRoutes(table, services);
  codeRoutes(table, services);
  fileRoutes(table, services);
  watchRoutes(table, services);
  metricsRoutes(table, services);
  templateRoutes(table, services);
  keyRoutes(table, services);
  volumeRoutes(table, services);
  snapshotRoutes(table, services);
  networkRoutes(table, services);
  let openapi: Record<string, unknown> | undefined;
  table.add({
    method: 'GET',
    url: '/v1/openapi.json',
    summary: 'This document',
    tag: 'meta',
    responses: { 200: { description: 'OpenAPI 3.1 document' } },
    handler: async () => (openapi ??= buildOpenApi(table, services.version)),
  });
  table.register(app);
  registerMcpRoutes(app, services);
  registerE2b(app, services);
  registerPortProxy(app, services);

  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send(new NotFoundError(`no route for ${req.method} ${req.url.split('?')[0]}`).toJSON());
  });

  app.setErrorHandler((err: FastifyError | CapsuleError | Error, req, reply) => {
    if (isCapsuleError(err)) {
      services.prometheus?.apiError(err.code);
      const status = HTTP_STATUS[err.code];
      if (status >= 500) req.log.error({ err }, 'request failed');
      return reply.code(status).send(err.toJSON());
    }
    const fe = err as FastifyError;
    // Fastify's own client errors (bad JSON, body too large, bad content type) keep their 4xx.
    if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
      const code = fe.statusCode === 413 ? 'payload_too_large' : fe.statusCode === 404 ? 'not_found' : 'invalid_argument';
      services.prometheus?.apiError(code);
      return reply.code(fe.statusCode).send(new CapsuleError(code, fe.message).toJSON());
    }
    req.log.error({ err }, 'unexpected error');
    services.prometheus?.apiError('internal');
    return reply.code(500).send(new InternalError('internal error; see the daemon log').toJSON());
  });
  return app;
}
