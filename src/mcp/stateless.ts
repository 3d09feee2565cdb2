/**
 * The 2026-07-28 (stateless) era over HTTP: no handshake and no session; each
 * POST carries its protocol version and client capabilities in `_meta`
 * (`io.modelcontextprotocol/protocolVersion`, `.../clientCapabilities`) and in
 * the `MCP-Protocol-Version`, `Mcp-Method` (and, for tools/call, `Mcp-Name`)
 * headers. The SDK's createMcpHandler does the validation ladder and the
 * per-request serving; this module only bridges fastify's Node request to the
 * web-standard Request/Response the handler speaks, and passes the caller
 * (from our API-key auth) to the server it builds for that one request.
 *
 * Nothing outlives the request: there is no default sandbox, so a tool called
 * without sandbox_id creates a sandbox every time and returns its id.
 */
import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { createMcpHandler, isLegacyRequest, type AuthInfo, type McpHttpHandler } from '@modelcontextprotocol/server';
import type { Principal } from '../auth/principal.js';
import type { McpBackend } from './backend.js';
import { createMcpServer } from './server.js';
import { newSessionState } from './tools.js';

export interface StatelessOptions {
  backendFor(principal: Principal): McpBackend;
  defaultTemplate: string;
  version: string;
  onUnexpectedError(err: unknown, where: string): void;
  /** SDK rejections (bad envelope, header mismatch): client errors, worth a debug line only. */
  onRejected?(err: Error): void;
}

function webHeaders(h: IncomingHttpHeaders): Headers {
  const out = new Headers();
  for (const [k, v] of Object.entries(h)) {
    if (v === undefined) continue;
    out.set(k, Array.isArray(v) ? v.join(', ') : v);
  }
  return out;
}

export class StatelessMcp {
  private readonly handler: McpHttpHandler;

  constructor(opts: StatelessOptions) {
    this.handler = createMcpHandler(
      (ctx) => {
        const principal = ctx.authInfo?.extra?.principal as Principal | undefined;
        if (!principal) throw new Error('stateless MCP request without a principal');
        return createMcpServer({
          backend: opts.backendFor(principal),
          defaultTemplate: opts.defaultTemplate,
          version: opts.version,
          session: newSessionState(),
          onUnexpectedError: opts.onUnexpectedError,
        });
      },
      // 2025-era traffic never reaches this handler (http.ts routes it to its sessions).
      { legacy: 'reject', onerror: (err) => opts.onRejected?.(err) },
    );
  }

  /** Whether a POST belongs to the 2026-07-28 era (it carries the per-request envelope). */
  static async isModern(url: string, headers: IncomingHttpHeaders, body: unknown): Promise<boolean> {
    return !(await isLegacyRequest(new Request(url, { method: 'POST', headers: webHeaders(headers) }), body));
  }

  /** Serve one POST; resolves when the response is written or the client left. */
  async serve(url: string, headers: IncomingHttpHeaders, text: string, body: unknown, principal: Principal, raw: ServerResponse): Promise<void> {
    // The client hanging up aborts the request: the SDK then aborts the tool call, which kills its process.
    const abort = new AbortController();
    const onClose = () => abort.abort();
    raw.once('close', onClose);
    const auth: AuthInfo = { token: '', clientId: principal.keyId ?? 'anonymous', scopes: [], extra: { principal } };
    try {
      const request = new Request(url, { method: 'POST', headers: webHeaders(headers), body: text, signal: abort.signal });
      const response = await this.handler.fetch(request, { authInfo: auth, parsedBody: body });
      const out: Record<string, string> = {};
      response.headers.forEach((v, k) => (out[k] = v));
      raw.writeHead(response.status, out);
      if (response.body) {
        for await (const chunk of Readable.fromWeb(response.body as import('node:stream/web').ReadableStream<Uint8Array>)) {
          if (raw.destroyed) break;
          raw.write(chunk);
        }
      }
      raw.end();
    } catch (err) {
      // A client that hung up is not a server failure; anything else goes to the route's error log.
      if (!abort.signal.aborted) throw err;
    } finally {
      raw.off('close', onClose);
    }
  }

  async close(): Promise<void> {
    await this.handler.close();
  }
}
