/**
 * The adapter between our SDK-free tool definitions (tools.ts) and the MCP
 * TypeScript SDK v2 (`@modelcontextprotocol/server`): one McpServer per
 * serving unit (a 2025-era session, a stdio connection, or one stateless
 * 2026-07-28 request), with every tool, the sandbox-files resource template
 * and the logging capability. This is the only module (with the transports)
 * that imports the SDK's server API.
 */
import { McpServer, ProtocolError, ProtocolErrorCode, ResourceNotFoundError, ResourceTemplate, type CallToolResult, type ReadResourceResult, type ReadResourceTemplateCallback } from '@modelcontextprotocol/server';
import { isCapsuleError } from '../errors/index.js';
import type { McpBackend } from './backend.js';
import { TOOLS, encodeContent, errorText, newSessionState, type SessionState, type ToolDef } from './tools.js';

export interface McpServerOptions {
  backend: McpBackend;
  /** Template for sandboxes a tool creates when called without sandbox_id. */
  defaultTemplate: string;
  version: string;
  /** State shared by the calls of one session (the default sandbox). */
  session?: SessionState;
  /** Where unexpected errors (bugs, not sandbox failures) are reported. */
  onUnexpectedError?: (err: unknown, where: string) => void;
}

/** Env fallback and default for the template of sandboxes created on demand. */
export const MCP_TEMPLATE_ENV = 'CAPSULE_MCP_TEMPLATE';
export function defaultMcpTemplate(explicit?: string): string {
  return explicit || process.env[MCP_TEMPLATE_ENV] || 'debian';
}

export const RESOURCE_TEMPLATE = 'capsule://sandboxes/{id}/files/{+path}';
export const ROOT_TEMPLATE = 'capsule://sandboxes/{id}/files/';

const INSTRUCTIONS = `Capsule runs code in isolated Linux sandboxes.
Create one with sandbox_create (or just call run_command / run_code / write_file without sandbox_id: a sandbox is created and, when your client keeps an MCP session, becomes its default).
Pass the returned sandbox_id to later calls to stay in the same sandbox. A command that exits non-zero is a normal result with its exit_code.
Sandboxes die when their timeout passes (default 5 minutes); extend it with sandbox_set_timeout and kill them with sandbox_kill when done.
sandbox_pause freezes a sandbox (sandbox_resume continues it); sandbox_stop ends its processes but keeps its files (sandbox_start boots it again). Both stop its timeout clock.
Files are also resources: capsule://sandboxes/{id}/files/{path}.`;

const MIME_BY_EXT: Record<string, string> = {
  txt: 'text/plain', md: 'text/markdown', py: 'text/x-python', js: 'text/javascript', ts: 'text/x-typescript', json: 'application/json',
  sh: 'text/x-shellscript', html: 'text/html', css: 'text/css', csv: 'text/csv', xml: 'application/xml', yaml: 'application/yaml', yml: 'application/yaml',
  png: 'image/png', jpg: 'image/jpeg', jpeg: 'image/jpeg', gif: 'image/gif', svg: 'image/svg+xml', pdf: 'application/pdf',
};

function mimeFor(path: string, binary: boolean): string {
  const ext = /\.([A-Za-z0-9]+)$/.exec(path)?.[1]?.toLowerCase();
  return (ext && MIME_BY_EXT[ext]) || (binary ? 'application/octet-stream' : 'text/plain');
}

export function fileUri(id: string, path: string): string {
  const rel = path.replace(/^\/+/, '');
  return `capsule://sandboxes/${id}/files/${rel.split('/').map(encodeURIComponent).join('/')}`;
}

export function createMcpServer(opts: McpServerOptions): McpServer {
  const session = opts.session ?? newSessionState();
  const server = new McpServer(
    { name: 'capsule', title: 'Capsule sandboxes', version: opts.version },
    { capabilities: { logging: {} }, instructions: INSTRUCTIONS },
  );
  for (const def of TOOLS) registerTool(server, def, opts, session);
  registerFiles(server, opts);
  return server;
}

function registerTool(server: McpServer, def: ToolDef, opts: McpServerOptions, session: SessionState): void {
  server.registerTool(
    def.name,
    {
      title: def.annotations.title,
      description: def.description,
      inputSchema: def.input,
      outputSchema: def.output,
      annotations: def.annotations,
    },
    async (args: unknown, ctx): Promise<CallToolResult> => {
      const token = ctx.mcpReq._meta?.progressToken;
      let sent = 0;
      const progress =
        token === undefined
          ? undefined
          : (message: string) => {
              sent += 1;
              ctx.mcpReq
                .notify({ method: 'notifications/progress', params: { progressToken: token, progress: sent, message } })
                .catch(() => undefined);
            };
      try {
        const out = await def.handler(args as never, { backend: opts.backend, session, defaultTemplate: opts.defaultTemplate, signal: ctx.mcpReq.signal, progress });
        return {
          content: [{ type: 'text', text: out.text }, ...(out.images ?? []).map((i) => ({ type: 'image' as const, data: i.data, mimeType: i.mimeType }))],
          structuredContent: out.structured as Record<string, unknown>,
          ...(out.isError ? { isError: true } : {}),
        };
      } catch (err) {
        const e = errorText(err);
        if (e.code === 'internal' || (isCapsuleError(err) && (err.code === 'internal' || err.code === 'runtime_error'))) {
          opts.onUnexpectedError?.(err, `tool ${def.name}`);
        }
        return { content: [{ type: 'text', text: `${e.code}: ${e.message}` }], isError: true };
      }
    },
  );
}

function registerFiles(server: McpServer, opts: McpServerOptions): void {
  const template = new ResourceTemplate(RESOURCE_TEMPLATE, {
    // The roots of the running sandboxes; deeper paths are found by reading a directory.
    list: async () => {
      const list = await opts.backend.listSandboxes({ state: 'running' });
      return {
        resources: list.map((s) => ({
          uri: fileUri(s.id, '/'),
          name: `${s.id}:/`,
          title: `/ of sandbox ${s.id} (${s.template})`,
          description: `Root directory of sandbox ${s.id}, template ${s.template}, expires ${s.expiresAt}`,
          mimeType: 'inode/directory',
        })),
      };
    },
  });
  const read = readFile(opts);
  server.registerResource(
    'sandbox-file',
    template,
    {
      title: 'File in a sandbox',
      description: 'A file or directory inside a running sandbox. Directories read as a listing (one entry per line, / after directories).',
    },
    read,
  );
  // `{+path}` does not match an empty path, so the root URIs that resources/list
  // hands out need a template of their own to be readable.
  server.registerResource(
    'sandbox-root',
    new ResourceTemplate(ROOT_TEMPLATE, { list: undefined }),
    { title: 'Root directory of a sandbox', description: 'The listing of / in a running sandbox (one entry per line, / after directories).', mimeType: 'inode/directory' },
    read,
  );
}

/** resources/read for both templates: a file's content, or a directory's listing. */
function readFile(opts: McpServerOptions): ReadResourceTemplateCallback {
  return async (uri, vars): Promise<ReadResourceResult> => {
    const id = String(vars.id ?? '');
    const raw = Array.isArray(vars.path) ? vars.path.join('/') : String(vars.path ?? '');
    const path = `/${decodeURIComponent(raw)}`;
    try {
      const st = await opts.backend.statFile(id, path);
      if (st.type === 'dir') {
        const r = await opts.backend.listFiles(id, path, 10_000);
        const lines = r.entries.map((e) => (e.type === 'dir' ? `${e.name}/` : e.name));
        if (r.truncated) lines.push('(more entries not shown)');
        return { contents: [{ uri: uri.href, mimeType: 'inode/directory', text: lines.join('\n') }] };
      }
      const data = await opts.backend.readFile(id, path, 16 * 1024 * 1024);
      const enc = encodeContent(data);
      return {
        contents: [
          enc.encoding === 'utf8'
            ? { uri: uri.href, mimeType: mimeFor(path, false), text: enc.content }
            : { uri: uri.href, mimeType: mimeFor(path, true), blob: enc.content },
        ],
      };
    } catch (err) {
      const e = errorText(err);
      if (e.code === 'internal') opts.onUnexpectedError?.(err, 'resources/read');
      // The SDK encodes a missing resource as -32602 with the URI in data (SEP-2164), in both eras.
      if (e.code === 'not_found') throw new ResourceNotFoundError(uri.href, `${e.code}: ${e.message}`);
      const code = e.code === 'invalid_argument' ? ProtocolErrorCode.InvalidParams : ProtocolErrorCode.InternalError;
      throw new ProtocolError(code, `${e.code}: ${e.message}`, { uri: uri.href });
    }
  };
}
