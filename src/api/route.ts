/**
 * One way to declare a route: its zod schemas validate the request and are
 * recorded for the OpenAPI document, so the document cannot drift from what
 * the server accepts.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { InvalidArgumentError, type ErrorCode } from '../errors/index.js';
import { requestContext, type RequestContext } from '../auth/context.js';
import { registerSocketRoutes, type SocketSession } from './socket.js';

export interface ResponseDoc {
  description: string;
  schema?: z.ZodType;
  /** Defaults to application/json. */
  contentType?: string;
}

export interface RouteSpec<P extends z.ZodType, Q extends z.ZodType, B extends z.ZodType> {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  /** Fastify path syntax, e.g. /v1/sandboxes/:id */
  url: string;
  summary: string;
  tag: string;
  params?: P;
  query?: Q;
  /** A zod schema for JSON bodies, or 'binary' for a raw streamed body. */
  body?: B | 'binary';
  /** Status code of a successful answer (first one is used when the handler returns a value). */
  responses: Record<number, ResponseDoc>;
  /** OpenAPI operationId; without it one is derived from the method and path (src/api/openapi.ts). */
  operationId?: string;
  /** Error codes this route answers beyond those openapi.ts derives from the route's shape and path. */
  errors?: readonly ErrorCode[];
  handler: (ctx: {
    params: z.infer<P>;
    query: z.infer<Q>;
    body: z.infer<B>;
    /** The authenticated caller (see api/auth.ts), the first argument of every service call. */
    ctx: RequestContext;
    req: FastifyRequest;
    reply: FastifyReply;
  }) => Promise<unknown>;
  /**
   * A WebSocket route (socket.ts): `handler` is not used; `socket` runs before the upgrade, validates
   * and looks things up (a CapsuleError there is an ordinary HTTP error answer), and returns the
   * session the upgraded socket (or, where the session has one, a plain HTTP request) runs.
   */
  socket?: (ctx: { params: z.infer<P>; query: z.infer<Q>; ctx: RequestContext; req: FastifyRequest }) => Promise<SocketSession>;
}

export type AnyRoute = RouteSpec<z.ZodType, z.ZodType, z.ZodType>;

export class RouteTable {
  readonly routes: AnyRoute[] = [];

  add<P extends z.ZodType = z.ZodObject<{}>, Q extends z.ZodType = z.ZodObject<{}>, B extends z.ZodType = z.ZodUnknown>(
    spec: RouteSpec<P, Q, B>,
  ): void {
    this.routes.push(spec as unknown as AnyRoute);
  }

  register(app: FastifyInstance): void {
    registerSocketRoutes(
      app,
      this.routes.filter((r) => r.socket),
      (r, req) => ({
        params: r.params ? parse(r.params, req.params, 'path parameter') : {},
        query: r.query ? parse(r.query, req.query, 'query parameter') : {},
        ctx: requestContext(req.principal, String(req.id)),
        req,
      }),
    );
    for (const r of this.routes) {
      if (r.socket) continue;
      const okStatus = Number(Object.keys(r.responses).find((s) => s.startsWith('2')) ?? 200);
      app.route({
        method: r.method,
        url: r.url,
        handler: async (req, reply) => {
          const params = r.params ? parse(r.params, req.params, 'path parameter') : {};
          const query = r.query ? parse(r.query, req.query, 'query parameter') : {};
          const body =
            r.body === undefined || r.body === 'binary' ? req.body : parse(r.body, req.body ?? {}, 'body');
          const ctx = requestContext(req.principal, String(req.id));
          const out = await r.handler({ params, query, body, ctx, req, reply } as never);
          if (reply.sent) return reply;
          if (out === undefined) return reply.code(okStatus === 200 ? 204 : okStatus).send();
          return reply.code(okStatus).send(out);
        },
      });
    }
  }
}

export function parse<T extends z.ZodType>(schema: T, value: unknown, where: string): z.infer<T> {
  const r = schema.safeParse(value);
  if (!r.success) {
    const issues = r.error.issues.slice(0, 10).map((i) => ({ path: i.path.map(String).join('.'), message: i.message }));
    const first = issues[0];
    throw new InvalidArgumentError(
      `invalid ${where}${first ? `: ${first.path ? `${first.path}: ` : ''}${first.message}` : ''}`,
      { issues },
    );
  }
  return r.data;
}
