/**
 * Raw MCP over HTTP for the tests that must see the wire itself (event ids,
 * dropped connections, headers of the 2026-07-28 era): an SSE reader over a
 * real socket that the test can cut at any moment, and the request envelope
 * of a stateless request.
 */
import http from 'node:http';

export interface SseEvent {
  id?: string;
  event?: string;
  data: string;
}

export interface SseStream {
  status: number;
  headers: http.IncomingHttpHeaders;
  /** The next event; undefined when the stream ended. */
  next(timeoutMs?: number): Promise<SseEvent | undefined>;
  /** Cut the connection as a network failure would. */
  drop(): void;
}

/** Send a request and read its answer as SSE (a JSON answer comes back as one event with that body). */
export function openSse(url: string, method: 'GET' | 'POST', headers: Record<string, string>, body?: string, signal?: AbortSignal): Promise<SseStream> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method, headers, ...(signal ? { signal } : {}) }, (res) => {
      const queue: SseEvent[] = [];
      let waiter: (() => void) | undefined;
      let ended = false;
      let buf = '';
      res.setEncoding('utf8');
      const json = !(res.headers['content-type'] ?? '').includes('text/event-stream');
      res.on('data', (chunk: string) => {
        buf += chunk;
        if (json) return;
        let cut: number;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const ev: SseEvent = { data: '' };
          const data: string[] = [];
          let fields = 0;
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) continue;
            const i = line.indexOf(':');
            const field = i < 0 ? line : line.slice(0, i);
            const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
            fields++;
            if (field === 'id') ev.id = value;
            else if (field === 'event') ev.event = value;
            else if (field === 'data') data.push(value);
          }
          if (fields === 0) continue;
          ev.data = data.join('\n');
          queue.push(ev);
        }
        waiter?.();
      });
      const end = () => {
        if (ended) return;
        if (json && buf) queue.push({ data: buf });
        ended = true;
        waiter?.();
      };
      res.on('end', end);
      res.on('close', end);
      res.on('error', end);
      resolve({
        status: res.statusCode ?? 0,
        headers: res.headers,
        next: async (timeoutMs = 10_000) => {
          const deadline = Date.now() + timeoutMs;
          while (queue.length === 0 && !ended) {
            const left = deadline - Date.now();
            if (left <= 0) throw new Error('no SSE event in time');
            await new Promise<void>((r) => {
              const t = setTimeout(r, left);
              waiter = () => {
                clearTimeout(t);
                r();
              };
            });
            waiter = undefined;
          }
          return queue.shift();
        },
        drop: () => {
          ended = true;
          req.destroy();
          res.destroy();
        },
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

export const MODERN = '2026-07-28';

/** The per-request `_meta` envelope of the 2026-07-28 era. */
export function envelope(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    'io.modelcontextprotocol/protocolVersion': MODERN,
    'io.modelcontextprotocol/clientCapabilities': {},
    'io.modelcontextprotocol/clientInfo': { name: 'capsule-test', version: '1' },
    ...extra,
  };
}

/** A stateless request: the body and the routing headers that must agree with it. */
export function modernRequest(id: number, method: string, params: Record<string, unknown> = {}, meta: Record<string, unknown> = {}): { headers: Record<string, string>; body: string } {
  const headers: Record<string, string> = { 'mcp-protocol-version': MODERN, 'mcp-method': method };
  if (typeof params.name === 'string') headers['mcp-name'] = params.name;
  return { headers, body: JSON.stringify({ jsonrpc: '2.0', id, method, params: { ...params, _meta: envelope(meta) } }) };
}
