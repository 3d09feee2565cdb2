/** Builds the OpenAPI 3.1 document from the route table (JSON Schema 2020-12 via zod). */
import { z } from 'zod';
import type { RouteTable } from './route.js';
import { ErrorBody } from '../schemas/common.js';

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

export function buildOpenApi(table: RouteTable, version: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
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
    responses.default = {
      description: 'Error',
      content: { 'application/json': { schema: jsonSchema(ErrorBody, 'output') } },
    };
    const op: Record<string, unknown> = {
      summary: r.summary,
      tags: [r.tag],
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
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    security: [{ bearer: [] }],
    paths,
  };
}
