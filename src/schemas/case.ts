/**
 * One case mapping for every view that speaks snake_case (the MCP tools
 * today, E2B's vocabulary next): a view takes the API's schema for a concept
 * (`.pick`, `.extend`) and renames its keys here, so every rule (bounds,
 * patterns, descriptions) exists once, in src/schemas.
 */
import { z } from 'zod';

/** `timeoutMs` → `timeout_ms` (ASCII keys). */
export type SnakeKey<S extends string> = S extends `${infer H}${infer T}`
  ? `${H extends Lowercase<H> ? H : `_${Lowercase<H>}`}${SnakeKey<T>}`
  : S;

export type SnakeShape<T extends z.ZodRawShape> = { [K in keyof T as K extends string ? SnakeKey<K> : K]: T[K] };

export function snakeKey(k: string): string {
  return k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

export function camelKey(k: string): string {
  return k.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** The same object schema with snake_case keys; every field (validation, default, description) unchanged. */
export function snakeObject<T extends z.ZodRawShape>(schema: z.ZodObject<T>): z.ZodObject<SnakeShape<T>> {
  const shape = Object.fromEntries(Object.entries(schema.shape).map(([k, v]) => [snakeKey(k), v]));
  return z.object(shape) as unknown as z.ZodObject<SnakeShape<T>>;
}

/** `{ timeout_ms: 1 }` → `{ timeoutMs: 1 }` (top-level keys; values untouched). */
export function fromSnake<T extends Record<string, unknown>>(input: T): Record<string, unknown> {
  return Object.fromEntries(Object.entries(input).map(([k, v]) => [camelKey(k), v]));
}

/** `{ timeoutMs: 1 }` → `{ timeout_ms: 1 }` (top-level keys; values untouched); undefined values dropped. */
export function toSnake(input: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(input).filter(([, v]) => v !== undefined).map(([k, v]) => [snakeKey(k), v]));
}
