/**
 * The two commands that run on the host itself instead of talking to a
 * daemon: `serve` starts one, `doctor` checks the host can run sandboxes.
 * Their modules are loaded lazily so the other commands start fast.
 */
import type { Command } from 'commander';
import type { DaemonConfig } from '../../config/index.js';
import { collect, parseNumber, printJson, UsageError } from '../util.js';

export function registerDaemonCommands(program: Command): void {
  program
    .command('serve')
    .description('run the Capsule daemon in the foreground (logs on stderr)')
    .option('--host <host>', 'address to listen on (env CAPSULE_HOST, default 127.0.0.1)')
    .option('--port <port>', 'port to listen on; 0 picks a free one (env CAPSULE_PORT, default 7878)')
    .option('--data-dir <dir>', 'where sandboxes, templates and state live (env CAPSULE_DATA_DIR)')
    .option('--runtime <runtime>', 'OCI runtime: crun, runc, runsc or a path (env CAPSULE_RUNTIME, default crun)')
    .option('--log-level <level>', 'trace, debug, info, warn, error (env CAPSULE_LOG_LEVEL, default info)')
    .option('--no-auth', 'accept requests without an API key (every caller is an admin; loopback only)')
    .option(
      '--pool <template=size>',
      'keep <size> started sandboxes of <template> ready to claim, e.g. busybox=4; 0 = off (repeatable; env CAPSULE_POOL=busybox=4,debian=2; default without either: debian=2)',
      collect,
    )
    .action(async (opts: { host?: string; port?: string; dataDir?: string; runtime?: string; logLevel?: string; auth: boolean; pool?: string[] }) => {
      const overrides: Partial<DaemonConfig> = {};
      if (opts.host !== undefined) overrides.host = opts.host;
      if (opts.port !== undefined) {
        const port = parseNumber(opts.port, '--port')!;
        if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port must be 0..65535, got ${opts.port}`);
        overrides.port = port;
      }
      if (opts.dataDir !== undefined) overrides.dataDir = opts.dataDir;
      if (opts.runtime !== undefined) overrides.runtime = opts.runtime;
      if (opts.logLevel !== undefined) overrides.logLevel = opts.logLevel;
      if (!opts.auth) {
        overrides.auth = false;
        process.stderr.write('capsule: WARNING: --no-auth: no API key is needed; anyone who reaches the port controls every sandbox\n');
      }
      const { loadConfig, parsePools } = await import('../../config/index.js');
      const config = loadConfig(overrides);
      if (opts.pool) {
        try {
          // Flags refine CAPSULE_POOL template by template; without it they replace the default pool.
          const base = process.env.CAPSULE_POOL === undefined ? {} : config.pools;
          config.pools = { ...base, ...parsePools(opts.pool) };
          config.buildPoolTemplates = true;
        } catch (e) {
          throw new UsageError(`--pool: ${(e as Error).message}`);
        }
      }
      const { startDaemon } = await import('../../daemon.js');
      const daemon = await startDaemon(config);
      process.stdout.write(`capsule: listening on ${daemon.url}\n`);

      // Sandboxes keep running after we stop; a restarted daemon adopts them.
      let closing = false;
      const shutdown = (sig: NodeJS.Signals) => {
        if (closing) {
          process.stderr.write(`capsule: ${sig} again, exiting now\n`);
          process.exit(1);
        }
        closing = true;
        daemon.close().then(
          () => process.exit(0),
          (err: unknown) => {
            process.stderr.write(`capsule: internal: shutdown failed: ${err instanceof Error ? err.message : String(err)}\n`);
            process.exit(1);
          },
        );
      };
      process.on('SIGINT', shutdown);
      process.on('SIGTERM', shutdown);
    });

  program
    .command('doctor')
    .description('check that this host can run sandboxes, and how to fix what is missing')
    .option('--fix', 'apply the safe fixes (needs root)')
    .option('--json', 'print the checks as JSON')
    .option('--runtime <runtime>', 'OCI runtime to check (env CAPSULE_RUNTIME, default crun)')
    .action(async (opts: { fix?: boolean; json?: boolean; runtime?: string }) => {
      const { loadConfig } = await import('../../config/index.js');
      const { runDoctor } = await import('../../runtime/doctor.js');
      const config = loadConfig();
      const runtime = opts.runtime ?? config.runtime;
      const checks = await runDoctor({ runtime, fix: opts.fix === true, scratchDir: config.dataDir });
      if (opts.json) printJson(checks);
      else {
        const width = Math.max(...checks.map((c) => c.name.length));
        for (const c of checks) {
          const mark = c.ok ? (c.fixed ? '✓ (fixed)' : '✓') : '✗';
          process.stdout.write(`${mark.padEnd(9)} ${c.name.padEnd(width)}  ${c.message}\n`);
          if (!c.ok && c.fix) process.stdout.write(`${''.padEnd(9)} ${''.padEnd(width)}  fix: ${c.fix}\n`);
        }
      }
      if (checks.some((c) => !c.ok)) process.exitCode = 1;
    });
}
