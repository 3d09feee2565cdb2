/**
 * `capsule mcp`: an MCP server on stdio.
 *
 *  - default: the tools talk to a running daemon through the SDK
 *    (--url / CAPSULE_URL, --api-key / CAPSULE_API_KEY);
 *  - `--embedded`: starts a daemon in this process (on a free loopback port)
 *    and calls its services directly; sandboxes this session created are
 *    killed when the client disconnects.
 *
 * Both protocol eras are served (SDK v2's serveStdio decides per connection
 * from its first message): a 2025-era client opens with `initialize`, a
 * 2026-07-28 client just sends requests carrying the version in `_meta`.
 * One process serves one client, so the default sandbox is per process.
 *
 * stdout carries the protocol; logs go to stderr only.
 */
import type { Command } from 'commander';
import type { DaemonConfig, SettingName } from '../../config/index.js';
import { connection, UsageError } from '../util.js';

interface McpOptions {
  embedded?: boolean;
  template?: string;
  dataDir?: string;
  runtime?: string;
  logLevel?: string;
}

export function registerMcpCommand(program: Command): void {
  program
    .command('mcp')
    .description('serve the Model Context Protocol on stdio (for Claude Desktop, IDEs and other MCP clients)')
    .option('--embedded', 'start a daemon inside this process instead of connecting to one')
    .option('--template <name>', 'template for sandboxes created when a tool gets no sandbox_id (env CAPSULE_MCP_TEMPLATE, default debian)')
    .option('--data-dir <dir>', 'with --embedded: where sandboxes, templates and state live (env CAPSULE_DATA_DIR)')
    .option('--runtime <runtime>', 'with --embedded: OCI runtime (env CAPSULE_RUNTIME, default crun)')
    .option('--log-level <level>', 'with --embedded: daemon log level on stderr (default warn)')
    .action(async (opts: McpOptions, cmd: Command) => {
      const { serveStdio } = await import('@modelcontextprotocol/server/stdio');
      const { createMcpServer, defaultMcpTemplate } = await import('../../mcp/server.js');
      const { sdkBackend, servicesBackend } = await import('../../mcp/backend.js');
      const { newSessionState } = await import('../../mcp/tools.js');
      const { packageVersion } = await import('../../daemon.js');

      const session = newSessionState();
      let backend;
      let shutdown: () => Promise<void> = async () => {};
      if (opts.embedded) {
        const { loadConfig, SettingError } = await import('../../config/index.js');
        const { startDaemon } = await import('../../daemon.js');
        const overrides: Partial<DaemonConfig> = { host: '127.0.0.1', port: 0 };
        // Quieter than `serve` unless asked: stderr is the MCP client's log.
        if (opts.logLevel === undefined && !process.env.CAPSULE_LOG_LEVEL) overrides.logLevel = 'warn';
        const flags: Partial<Record<SettingName, string>> = {};
        if (opts.logLevel !== undefined) flags.logLevel = opts.logLevel;
        if (opts.dataDir !== undefined) flags.dataDir = opts.dataDir;
        if (opts.runtime !== undefined) flags.runtime = opts.runtime;
        let config: DaemonConfig;
        try {
          config = loadConfig(overrides, { flags });
        } catch (e) {
          if (e instanceof SettingError && e.source === 'flag') throw new UsageError(e.message);
          throw e;
        }
        const daemon = await startDaemon(config);
        process.stderr.write(`capsule mcp: embedded daemon on ${daemon.url}\n`);
        const b = servicesBackend(daemon.services);
        backend = b;
        shutdown = async () => {
          await Promise.allSettled([...session.created].map((id) => b.killSandbox(id)));
          await daemon.close();
        };
      } else {
        backend = sdkBackend(connection(cmd));
      }

      const report = (err: unknown, where: string) => process.stderr.write(`capsule mcp: ${where}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      // Called once for the connection (and once more for a discovery probe the SDK may throw away).
      const factory = () =>
        createMcpServer({ backend, defaultTemplate: defaultMcpTemplate(opts.template), version: packageVersion(), session, onUnexpectedError: report });
      let closing = false;
      const stop = () => {
        if (closing) return;
        closing = true;
        void Promise.allSettled([handle.close()])
          .then(() => shutdown())
          .finally(() => process.exit(0));
      };
      const handle = serveStdio(factory, { onerror: (err) => report(err, 'stdio') });
      // The SDK owns the transport; the end of stdin is our signal that the client went away.
      process.stdin.once('end', stop);
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
}
