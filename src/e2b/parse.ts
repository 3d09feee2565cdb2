/** Checks a value against its schema at the adapter's edge; a bad one is `invalid_argument`, naming the field. */
import type { z } from 'zod';
import { InvalidArgumentError } from '../errors/index.js';

export function parse<S extends z.ZodType>(schema: S, value: unknown, where: string): z.infer<S> {
  const r = schema.safeParse(value ?? {});
  if (r.success) return r.data;
  const i = r.error.issues[0];
  throw new InvalidArgumentError(`invalid ${where}${i ? `: ${i.path.length ? `${i.path.map(String).join('.')}: ` : ''}${i.message}` : ''}`, {
    issues: r.error.issues.slice(0, 10).map((x) => ({ path: x.path.map(String).join('.'), message: x.message })),
  });
}
