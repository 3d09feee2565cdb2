/**
 * Building blocks of the proto3 JSON mapping that Connect's JSON codec uses: lowerCamelCase field
 * names (parsers also accept the proto names), 32-bit integers as numbers or strings, 64-bit ones
 * as strings, bytes as base64, enums as their names or numbers, Timestamps as RFC 3339 strings.
 */
import { z } from 'zod';
import { camelKey } from '../case.js';

/** Proto field names (snake_case) accepted as their JSON names, at every depth of plain objects. */
function camelize(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(camelize);
  if (v === null || typeof v !== 'object') return v;
  return Object.fromEntries(Object.entries(v as Record<string, unknown>).map(([k, x]) => [k.includes('_') ? camelKey(k) : k, camelize(x)]));
}

/** A message schema that takes either naming; unknown fields are ignored, as proto3 JSON parsers may. */
export function message<T extends z.ZodRawShape>(shape: T) {
  return z.preprocess(camelize, z.object(shape).passthrough());
}

export const Uint32 = z.union([z.number().int().min(0).max(2 ** 32 - 1), z.string().regex(/^\d{1,10}$/).transform(Number)]).pipe(z.number().int().min(0).max(2 ** 32 - 1));

/** proto3 `bytes`: standard or URL-safe base64, padded or not. */
export const Bytes = z
  .string()
  .regex(/^[A-Za-z0-9+/_-]*={0,2}$/, 'bytes are base64')
  .transform((s) => Buffer.from(s.replace(/-/g, '+').replace(/_/g, '/'), 'base64'));

/** An enum field: its value name, or its number. */
export function protoEnum<N extends string>(values: Record<N, number>) {
  const byNumber = new Map(Object.entries<number>(values).map(([k, v]) => [v, k as N]));
  return z.union([z.string(), z.number().int()]).transform((v, c): N => {
    const name = typeof v === 'number' ? byNumber.get(v) : (Object.hasOwn(values, v) ? (v as N) : undefined);
    if (name === undefined) {
      c.addIssue({ code: 'custom', message: `unknown enum value ${String(v)}` });
      return z.NEVER;
    }
    return name;
  });
}

/** google.protobuf.Timestamp in JSON: RFC 3339 in UTC with a Z. */
export function timestamp(ms: number): string {
  return new Date(Number.isFinite(ms) ? ms : 0).toISOString();
}
