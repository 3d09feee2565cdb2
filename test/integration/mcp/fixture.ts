/**
 * Shared by the MCP integration tests: a real test daemon (busybox as the
 * template for sandboxes created on demand) and an MCP SDK Client connected
 * over stdio (`node bin/capsule.js mcp` against that daemon) or over
 * Streamable HTTP (`/mcp` of that daemon).
 */
import fs from 'node:fs';
import http from 'node:http';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { CLI, authHeaders, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';

export const TRANSPORTS = ['stdio', 'http'] as const;
export type TransportKind = (typeof TRANSPORTS)[number];

export async function startMcpDaemon(args: string[] = []): Promise<TestDaemon> {
  // mkdtemp makes the directory 0700, which the sandbox's mapped root cannot traverse.
  const dataDir = tempDataDir();
  fs.chmodSync(dataDir, 0o755);
  return startTestDaemon({ dataDir, env: { CAPSULE_MCP_TEMPLATE: 'busybox' }, args });
}

export interface Connected {
  client: Client;
  /** What the stdio server printed on stderr (for failure messages). */
  stderr(): string;
  close(): Promise<void>;
}

/** `key`: the API key to present; default the daemon's admin key. */
export async function connectClient(kind: TransportKind, d: TestDaemon, key?: string): Promise<Connected> {
  const client = new Client({ name: 'capsule-test', version: '1.0.0' });
  let err = '';
  if (kind === 'http') {
    const transport = new StreamableHTTPClientTransport(new URL(`${d.url}/mcp`), {
      requestInit: { headers: key ? { authorization: `Bearer ${key}` } : authHeaders(d.url) },
    });
    await client.connect(transport);
    return {
      client,
      stderr: () => '',
      close: async () => {
        await transport.terminateSession().catch(() => undefined);
        await client.close();
      },
    };
  }
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v;
  env.CAPSULE_URL = d.url;
  if (key ?? d.adminKey) env.CAPSULE_API_KEY = (key ?? d.adminKey)!;
  const transport = new StdioClientTransport({ command: process.execPath, args: [CLI, 'mcp', '--template', 'busybox'], env, stderr: 'pipe' });
  transport.stderr?.on('data', (b: Buffer) => {
    err = (err + b.toString('utf8')).slice(-20_000);
  });
  await client.connect(transport);
  return { client, stderr: () => err, close: () => client.close() };
}

/** One HTTP POST with headers fetch would not let us set (Host); the body is read for at most 3 s (SSE may stay open). */
export function rawPost(url: string, headers: Record<string, string>, body: string): Promise<{ status: number; body: string }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST', headers }, (res) => {
      let b = '';
      const done = () => {
        clearTimeout(timer);
        res.destroy();
        resolve({ status: res.statusCode ?? 0, body: b });
      };
      const timer = setTimeout(done, 3000);
      res.setEncoding('utf8');
      res.on('data', (d: string) => (b += d));
      res.on('end', done);
    });
    req.on('error', reject);
    req.end(body);
  });
}

export const INIT_BODY = JSON.stringify({
  jsonrpc: '2.0',
  id: 1,
  method: 'initialize',
  params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 'rebinding-test', version: '1' } },
});
