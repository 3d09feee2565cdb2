/**
 * Shared by the MCP integration tests: a real test daemon (busybox as the
 * template for sandboxes created on demand) and an MCP client connected over
 * stdio (`node bin/capsule.js mcp` against that daemon) or over Streamable
 * HTTP (`/mcp` of that daemon), in either protocol era:
 *
 *  - `stdio`, `http`: the 1.x SDK's Client, a 2025-11-25 client with a session
 *    (what most clients in the field are);
 *  - `stdio-2026`, `http-2026`: the v2 SDK's Client pinned to 2026-07-28,
 *    stateless: no initialize, the version in every request.
 */
import fs from 'node:fs';
import http from 'node:http';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { Client as ModernClient, StreamableHTTPClientTransport as ModernHttpTransport } from '@modelcontextprotocol/client';
import { StdioClientTransport as ModernStdioTransport } from '@modelcontextprotocol/client/stdio';
import type { CallToolResult, ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Tool } from '@modelcontextprotocol/sdk/types.js';
import { CLI, authHeaders, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';

export const TRANSPORTS = ['stdio', 'http', 'stdio-2026', 'http-2026'] as const;
export type TransportKind = (typeof TRANSPORTS)[number];

/** True when the kind keeps no MCP session between calls (stateless HTTP). */
export function isStateless(kind: TransportKind): boolean {
  return kind === 'http-2026';
}

export interface CallOptions {
  signal?: AbortSignal;
  onprogress?: (p: { progress: number; message?: string | undefined }) => void;
}

/** What the scenarios need from a client, the same for both SDK generations. */
export interface McpClient {
  listTools(): Promise<{ tools: Tool[] }>;
  callTool(name: string, args: Record<string, unknown>, opts?: CallOptions): Promise<CallToolResult>;
  readResource(uri: string): Promise<ReadResourceResult>;
  listResources(): Promise<ListResourcesResult>;
  listResourceTemplates(): Promise<ListResourceTemplatesResult>;
}

export async function startMcpDaemon(args: string[] = []): Promise<TestDaemon> {
  // mkdtemp makes the directory 0700, which the sandbox's mapped root cannot traverse.
  const dataDir = tempDataDir();
  fs.chmodSync(dataDir, 0o755);
  return startTestDaemon({ dataDir, env: { CAPSULE_MCP_TEMPLATE: 'busybox' }, args });
}

export interface Connected {
  client: McpClient;
  /** What the stdio server printed on stderr (for failure messages). */
  stderr(): string;
  close(): Promise<void>;
}

function legacyFacade(c: Client): McpClient {
  return {
    listTools: () => c.listTools(),
    callTool: async (name, args, opts) => (await c.callTool({ name, arguments: args }, undefined, opts)) as CallToolResult,
    readResource: (uri) => c.readResource({ uri }),
    listResources: () => c.listResources(),
    listResourceTemplates: () => c.listResourceTemplates(),
  };
}

function modernFacade(c: ModernClient): McpClient {
  return {
    listTools: async () => (await c.listTools()) as { tools: Tool[] },
    callTool: async (name, args, opts) => (await c.callTool({ name, arguments: args }, opts)) as CallToolResult,
    readResource: async (uri) => (await c.readResource({ uri })) as ReadResourceResult,
    listResources: async () => (await c.listResources()) as ListResourcesResult,
    listResourceTemplates: async () => (await c.listResourceTemplates()) as ListResourceTemplatesResult,
  };
}

function childEnv(d: TestDaemon, key?: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v;
  env.CAPSULE_URL = d.url;
  if (key ?? d.adminKey) env.CAPSULE_API_KEY = (key ?? d.adminKey)!;
  return env;
}

/** `key`: the API key to present; default the daemon's admin key. */
export async function connectClient(kind: TransportKind, d: TestDaemon, key?: string): Promise<Connected> {
  if (kind === 'stdio-2026' || kind === 'http-2026') return connectModern(kind, d, key);
  const client = new Client({ name: 'capsule-test', version: '1.0.0' });
  let err = '';
  if (kind === 'http') {
    const transport = new StreamableHTTPClientTransport(new URL(`${d.url}/mcp`), {
      requestInit: { headers: key ? { authorization: `Bearer ${key}` } : authHeaders(d.url) },
    });
    await client.connect(transport);
    return {
      client: legacyFacade(client),
      stderr: () => '',
      close: async () => {
        await transport.terminateSession().catch(() => undefined);
        await client.close();
      },
    };
  }
  const transport = new StdioClientTransport({ command: process.execPath, args: [CLI, 'mcp', '--template', 'busybox'], env: childEnv(d, key), stderr: 'pipe' });
  transport.stderr?.on('data', (b: Buffer) => {
    err = (err + b.toString('utf8')).slice(-20_000);
  });
  await client.connect(transport);
  return { client: legacyFacade(client), stderr: () => err, close: () => client.close() };
}

async function connectModern(kind: 'stdio-2026' | 'http-2026', d: TestDaemon, key?: string): Promise<Connected> {
  // Pinned, not 'auto': a fallback to initialize would hide a broken stateless path.
  const client = new ModernClient({ name: 'capsule-test-2026', version: '1.0.0' }, { versionNegotiation: { mode: { pin: '2026-07-28' } } });
  let err = '';
  if (kind === 'http-2026') {
    const transport = new ModernHttpTransport(new URL(`${d.url}/mcp`), {
      requestInit: { headers: key ? { authorization: `Bearer ${key}` } : authHeaders(d.url) },
    });
    await client.connect(transport);
    return { client: modernFacade(client), stderr: () => '', close: () => client.close() };
  }
  const transport = new ModernStdioTransport({ command: process.execPath, args: [CLI, 'mcp', '--template', 'busybox'], env: childEnv(d, key), stderr: 'pipe' });
  transport.stderr?.on('data', (b: Buffer) => {
    err = (err + b.toString('utf8')).slice(-20_000);
  });
  await client.connect(transport);
  return { client: modernFacade(client), stderr: () => err, close: () => client.close() };
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
