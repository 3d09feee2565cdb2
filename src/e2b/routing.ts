/**
 * Where E2B's in-sandbox requests enter. The `e2b` SDK sends them to E2B_SANDBOX_URL (the daemon's
 * origin) with `E2b-Sandbox-Id` and `E2b-Sandbox-Port` headers, or to `<port>-<id>.<domain>`; the
 * signed file URLs it makes carry neither, only `/files?…&signature=`. fastify's rewriteUrl turns
 * each into an internal path the adapter's routes serve:
 *
 *   port 49983 (envd)               → /e2b/envd/<id>/<path>
 *   port 49999 (code interpreter)   → /e2b/jupyter/<id>/<path>
 *   /files?…&signature=… (no id)    → /e2b/envd/-/files?…   (the signature names the sandbox)
 *
 * Requests for other ports are left alone (the port proxy serves `<port>-<id>.localhost`).
 */
import type http from 'node:http';
import { SANDBOX_ID_RE } from '../schemas/common.js';

export const ENVD_PORT = 49983;
export const JUPYTER_PORT = 49999;
/** The sandbox id of a signed file URL that names none. */
export const BY_SIGNATURE = '-';

const HOST_RE = /^(\d{1,5})-(sbx-[a-z0-9]{12})\.[a-z0-9.-]+(?::\d+)?$/i;
const INTERNAL_RE = /^\/e2b\/(envd|jupyter)\//;

function internal(port: number, id: string, url: string): string | undefined {
  if (port === ENVD_PORT) return `/e2b/envd/${id}${url}`;
  if (port === JUPYTER_PORT) return `/e2b/jupyter/${id}${url}`;
  return undefined;
}

/** The internal path of an E2B in-sandbox request, or undefined when the request is not one. */
export function e2bRoutedUrl(req: http.IncomingMessage): string | undefined {
  const url = req.url ?? '/';
  const header = req.headers['e2b-sandbox-id'];
  if (typeof header === 'string') {
    const id = header.trim().toLowerCase();
    if (!SANDBOX_ID_RE.test(id)) return undefined;
    const portHeader = req.headers['e2b-sandbox-port'];
    const port = typeof portHeader === 'string' && /^\d{1,5}$/.test(portHeader.trim()) ? Number(portHeader.trim()) : ENVD_PORT;
    return internal(port, id, url);
  }
  const host = HOST_RE.exec(req.headers.host ?? '');
  if (host) return internal(Number(host[1]), host[2]!.toLowerCase(), url);
  if ((url.startsWith('/files?') || url === '/files') && /[?&]signature=/.test(url)) return `/e2b/envd/${BY_SIGNATURE}${url}`;
  return undefined;
}

/** Whether a (rewritten) path is an in-sandbox request: authorized by the sandbox's access token, not by an API key. */
export function isEnvdPath(path: string): boolean {
  return INTERNAL_RE.test(path);
}
