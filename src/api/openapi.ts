/** Builds the OpenAPI 3.1 document from the route table (JSON Schema 2020-12 via zod). */
import { z } from 'zod';
import type { AnyRoute, RouteTable } from './route.js';
import { ErrorBody } from '../schemas/common.js';
import { ERROR_CODES, HTTP_STATUS, type ErrorCode } from '../errors/index.js';
import { PUBLIC_PATHS } from './auth.js';

function jsonSchema(s: z.ZodType, io: 'input' | 'output'): Record<string, unknown> {
  return z.toJSONSchema(s, { io, unrepresentable: 'any' }) as Record<string, unknown>;
}

function objectParams(s: z.ZodType | undefined, where: 'path' | 'query'): unknown[] {
  if (!s) return [];
  const js = jsonSchema(s, 'input') as { properties?: Record<string, Record<string, unknown>>; required?: string[] };
  return Object.entries(js.properties ?? {}).map(([name, schema]) => ({
    name,
    in: where,
    required: where === 'path' || (js.required ?? []).includes(name),
    ...(typeof schema.description === 'string' ? { description: schema.description } : {}),
    schema,
  }));
}

/** What each code means to a client reading the document, in one line. */
const ERROR_MEANING: Record<ErrorCode, string> = {
  invalid_argument: 'the request does not match its schema (the message names the field)',
  unauthenticated: 'no API key, or a revoked one',
  permission_denied: 'the key may not do this, or the file permissions inside the sandbox forbid it',
  not_found: 'no such sandbox, process, file, template or key (or not visible to this key)',
  conflict: 'the target is in the wrong state (e.g. the sandbox has ended)',
  payload_too_large: 'the request body or the requested content is over its limit',
  rate_limited: "over the key's request rate or a quota",
  sandbox_error: 'something inside the sandbox failed (its agent, a full disk, a special file)',
  unsupported: "the sandbox's backend or agent cannot do this (see the runtime's capabilities)",
  timeout: 'the operation did not finish in time',
  runtime_error: 'the OCI runtime or the host failed (logged)',
  unavailable: 'the daemon cannot serve this now',
  internal: 'a fault of the daemon itself (logged)',
};

/**
 * Codes answered by the services behind a path (Fastify syntax; a prefix covers the
 * paths below it). The HTTP edge's own codes are added by edgeErrors; a route can add
 * more with RouteSpec.errors.
 */
const SERVICE_ERRORS: ReadonlyArray<{ method?: AnyRoute['method']; prefix: string; codes: readonly ErrorCode[] }> = [
  // Create: unknown template (404), the runtime, and the new sandbox's agent.
  { method: 'POST', prefix: '/v1/sandboxes', codes: ['not_found', 'conflict', 'runtime_error', 'sandbox_error', 'unsupported', 'timeout'] },
  // Anything on one sandbox: it may have ended or be mid-create (409), its agent may fail or not answer.
  { prefix: '/v1/sandboxes/:id', codes: ['conflict', 'sandbox_error', 'unsupported', 'timeout', 'runtime_error'] },
  // File modes inside the sandbox apply to the files API too.
  { prefix: '/v1/sandboxes/:id/files', codes: ['permission_denied'] },
  // Keys need an admin key, and do not exist at all with --no-auth (409).
  { prefix: '/v1/keys', codes: ['permission_denied', 'conflict'] },
  // A forced rebuild needs an admin key; a build runs host tools.
  { prefix: '/v1/templates/:name/build', codes: ['permission_denied', 'runtime_error'] },
];

/** Codes the HTTP edge answers for a route whatever its handler does: validation, body limit, auth, bugs. */
function edgeErrors(r: AnyRoute): ErrorCode[] {
  const codes: ErrorCode[] = ['internal'];
  if (r.params || r.query || r.body) codes.push('invalid_argument');
  // JSON bodies have a size limit (server.ts); raw uploads are streamed and limited by the sandbox's disk.
  if (r.body && r.body !== 'binary') codes.push('payload_too_large');
  if (!PUBLIC_PATHS.has(r.url)) codes.push('unauthenticated', 'rate_limited');
  // A path id that names nothing (or something this key cannot see).
  if (r.params) codes.push('not_found');
  return codes;
}

export function errorCodesOf(r: AnyRoute): ErrorCode[] {
  const codes = new Set<ErrorCode>([...edgeErrors(r), ...(r.errors ?? [])]);
  for (const s of SERVICE_ERRORS) {
    if (s.method && s.method !== r.method) continue;
    if (s.method ? r.url === s.prefix : r.url === s.prefix || r.url.startsWith(`${s.prefix}/`)) for (const c of s.codes) codes.add(c);
  }
  return ERROR_CODES.filter((c) => codes.has(c));
}

/** One response per HTTP status, naming the codes that can come with it. */
function errorResponses(codes: ErrorCode[]): Record<string, unknown> {
  const byStatus = new Map<number, ErrorCode[]>();
  for (const c of codes) byStatus.set(HTTP_STATUS[c], [...(byStatus.get(HTTP_STATUS[c]) ?? []), c]);
  const out: Record<string, unknown> = {};
  for (const [status, cs] of [...byStatus].sort((a, b) => a[0] - b[0])) {
    out[String(status)] = {
      description: cs.map((c) => `\`${c}\`: ${ERROR_MEANING[c]}`).join('; '),
      content: { 'application/json': { schema: { $ref: '#/components/schemas/ErrorBody' } } },
    };
  }
  return out;
}

/** getSandboxesById-style names: unique because method + path is, and stable while the path is. */
function deriveOperationId(r: AnyRoute): string {
  const cap = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);
  const words = r.url
    .split('/')
    .filter((seg) => seg !== '' && seg !== 'v1')
    .map((seg) => (seg.startsWith(':') ? `By${cap(seg.slice(1))}` : seg.split(/[^A-Za-z0-9]+/).map(cap).join('')));
  return r.method.toLowerCase() + words.join('');
}

export function buildOpenApi(table: RouteTable, version: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  const ids = new Set<string>();
  for (const r of table.routes) {
    const p = r.url.replace(/:([A-Za-z]+)/g, '{$1}');
    const responses: Record<string, unknown> = {};
    for (const [status, doc] of Object.entries(r.responses)) {
      const ct = doc.contentType ?? 'application/json';
      responses[status] = {
        description: doc.description,
        ...(doc.schema || ct !== 'application/json'
          ? { content: { [ct]: { schema: doc.schema ? jsonSchema(doc.schema, 'output') : { type: 'string', format: 'binary' } } } }
          : {}),
      };
    }
    Object.assign(responses, errorResponses(errorCodesOf(r)));
    responses.default = {
      description: 'Any other error, in the same shape',
      content: { 'application/json': { schema: { $ref: '#/components/schemas/ErrorBody' } } },
    };
    const operationId = r.operationId ?? deriveOperationId(r);
    // Two routes with one id would make generated clients silently drop one of them.
    if (ids.has(operationId)) throw new Error(`OpenAPI: operationId ${operationId} is used twice (${r.method} ${r.url}); set RouteSpec.operationId`);
    ids.add(operationId);
    const op: Record<string, unknown> = {
      operationId,
      summary: r.summary,
      tags: [r.tag],
      // The document's default is the bearer key; the public paths need none.
      ...(PUBLIC_PATHS.has(r.url) ? { security: [] } : {}),
      parameters: [...objectParams(r.params, 'path'), ...objectParams(r.query, 'query')],
      responses,
    };
    if (r.body === 'binary') {
      op.requestBody = { required: true, content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } } };
    } else if (r.body) {
      op.requestBody = { required: true, content: { 'application/json': { schema: jsonSchema(r.body, 'input') } } };
    }
    (paths[p] ??= {})[r.method.toLowerCase()] = op;
  }
  return {
    openapi: '3.1.0',
    info: { title: 'Capsule API', version, description: 'Self-hosted code-execution sandboxes' },
    servers: [{ url: '/' }],
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      schemas: { ErrorBody: jsonSchema(ErrorBody, 'output') },
    },
    security: [{ bearer: [] }],
    paths,
  };
}
