/**
 * Users in E2B's in-sandbox API: `Authorization: Basic base64("<user>:")` (RPC) or `username=`
 * (files) names who acts; without it, the template's user (`user` in base and python, root in
 * busybox). Relative paths are relative to that user's home, as envd resolves them.
 */
import path from 'node:path';
import type { FastifyRequest } from 'fastify';
import type { SandboxRecord } from '../sandboxes/store.js';
import { envd } from '../schemas/e2b/index.js';
import { InvalidArgumentError } from '../errors/index.js';

/** The user an `Authorization: Basic` header names, or undefined without one. */
export function basicUser(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  const m = typeof h === 'string' ? /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(h) : null;
  if (!m) return undefined;
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  const name = decoded.includes(':') ? decoded.slice(0, decoded.indexOf(':')) : decoded;
  if (name === '') return undefined;
  const r = envd.User.safeParse(name);
  if (!r.success) throw new InvalidArgumentError(`invalid user ${JSON.stringify(name.slice(0, 64))}: ${r.error.issues[0]?.message ?? ''}`);
  return r.data;
}

/** Who acts: the user asked for, else the template's, else root. */
export function effectiveUser(rec: SandboxRecord, asked: string | undefined): string {
  return asked ?? rec.defaults.user ?? 'root';
}

export function homeOf(user: string): string {
  return user === 'root' || user === '0' ? '/root' : /^\d+$/.test(user) ? '/' : `/home/${user}`;
}

/** An absolute path: relative ones from the user's home. */
export function userPath(p: string, user: string): string {
  return path.posix.resolve(homeOf(user), p);
}

export function isRoot(user: string): boolean {
  return user === 'root' || user === '0';
}
