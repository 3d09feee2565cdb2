/**
 * The E2B-compatible front door: a third view (after REST and MCP) over the same services. It
 * registers three groups of routes on the daemon's fastify server, each with its own error shape:
 *
 *   /e2b/…                the control plane (E2B_API_URL=http://<daemon>/e2b), API keys as usual;
 *   /e2b/envd/:id/…       envd: HTTP routes and the Process and Filesystem Connect services;
 *   /e2b/jupyter/:id/…    the code interpreter server.
 *
 * The last two are reached through routing.ts's rewrite of E2B's in-sandbox requests. Design: ADR 0014.
 */
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Services } from '../api/services.js';
import { isCapsuleError } from '../errors/index.js';
import { controlRoutes } from './control.js';
import { EnvdAuth } from './envd-auth.js';
import { envdHttpRoutes } from './envd-http.js';
import { apiError, envdHttpError } from './errors.js';
import { filesystemService } from './filesystem.js';
import { interpreterRoutes } from './interpreter.js';
import { processService } from './process.js';
import { E2bTokens } from './tokens.js';

export { e2bRoutedUrl, isEnvdPath } from './routing.js';

type Shape = (err: unknown) => { status: number; body: unknown } | undefined;

/** fastify's own client errors (bad JSON, body too large) keep their status; everything else unexpected is a logged 500. */
function errorHandler(s: Services, shape: Shape, text = false) {
  return (err: FastifyError | Error, req: FastifyRequest, reply: FastifyReply) => {
    if (isCapsuleError(err)) s.prometheus?.apiError(err.code);
    let out = shape(err);
    if (!out) {
      const fe = err as FastifyError;
      if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) out = { status: fe.statusCode, body: { code: fe.statusCode, message: fe.message } };
      else {
        req.log.error({ err }, 'unexpected error in the E2B adapter');
        out = { status: 500, body: { code: 500, message: 'internal error; see the daemon log' } };
      }
    }
    if (text) {
      const b = out.body as { message?: string };
      return reply.code(out.status).type('text/plain; charset=utf-8').send(b.message ?? '');
    }
    return reply.code(out.status).send(out.body);
  };
}

/**
 * E2B's SDKs send `Content-Type: application/json` with no body on some calls (restart or remove
 * a code context): an empty JSON body is no body here, not fastify's 400.
 */
function lenientJson(app: FastifyInstance): void {
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string', bodyLimit: 16 * 1024 * 1024 }, (_req, body, done) => {
    const text = typeof body === 'string' ? body : body.toString('utf8');
    if (text.trim() === '') return done(null, undefined);
    try {
      done(null, JSON.parse(text) as unknown);
    } catch (err) {
      done(Object.assign(new Error(`the body is not JSON: ${(err as Error).message}`), { statusCode: 400 }), undefined);
    }
  });
}

export function registerE2b(app: FastifyInstance, s: Services): void {
  const tokens = new E2bTokens({ dataDir: s.dataDir });
  const auth = new EnvdAuth(s, tokens);

  void app.register(
    async (api) => {
      lenientJson(api);
      api.setErrorHandler(errorHandler(s, apiError));
      api.setNotFoundHandler((req, reply) => reply.code(404).send({ code: 404, message: `no E2B route for ${req.method} ${req.url.split('?')[0]}` }));
      controlRoutes(api, s, tokens);
    },
    { prefix: '/e2b' },
  );

  void app.register(
    async (envd) => {
      // Connect calls answer their own errors (connect.ts); what reaches this handler is the HTTP routes' or fastify's.
      envd.setErrorHandler(errorHandler(s, envdHttpError));
      envdHttpRoutes(envd, s, auth);
      processService(envd, s, auth);
      filesystemService(envd, s, auth);
      envd.all('/*', async (req, reply) => {
        if (/^\/e2b\/envd\/[^/]+\/[a-z]+\.[A-Z][A-Za-z]+\//.test(req.url)) {
          return reply.code(404).header('content-type', 'application/json').send(JSON.stringify({ code: 'unimplemented', message: `no such procedure: ${req.url.split('?')[0]!.split('/').slice(4).join('/')}` }));
        }
        return reply.code(404).send({ code: 404, message: `no envd route for ${req.method} ${'/' + req.url.split('?')[0]!.split('/').slice(4).join('/')}` });
      });
    },
    { prefix: '/e2b/envd/:id' },
  );

  void app.register(
    async (jupyter) => {
      lenientJson(jupyter);
      jupyter.setErrorHandler(errorHandler(s, envdHttpError, true));
      interpreterRoutes(jupyter, s, auth);
      jupyter.all('/*', async (req, reply) => reply.code(404).type('text/plain').send(`no code interpreter route for ${req.method} ${req.url.split('?')[0]}`));
    },
    { prefix: '/e2b/jupyter/:id' },
  );
}
