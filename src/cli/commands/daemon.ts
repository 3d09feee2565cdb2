/**
 * The two commands that run on the host itself instead of talking to a
 * daemon: `serve` starts one, `doctor` checks the host can run sandboxes.
 * The daemon and the host checks are loaded lazily so the other commands start fast.
 */
import type { Command } from 'commander';
import { SETTINGS, SettingError, loadConfig, parsePools, settingDefault, type DaemonConfig, type SettingName } from '../../config/index.js';
import { collect, printJson, UsageError } from '../util.js';

/** The settings `capsule serve` takes as flags, with their help from the one settings table. */
const SERVE_FLAGS = ['host', 'port', 'dataDir', 'runtime', 'isolation', 'logLevel'] as const satisfies readonly SettingName[];

function flagHelp(name: SettingName & (typeof SERVE_FLAGS)[number]): [string, string] {
  const s = SETTINGS[name];
  const def = settingDefault(name);
  const shown = def !== undefined ? `, default ${def}` : '';
  return [`${s.flag} <${name === 'dataDir' ? 'dir' : name === 'logLevel' ? 'level' : name}>`, `${s.describe} (env ${s.env}${shown})`];
}

/** Settings from flags and the environment; a bad flag is a usage error (exit 2), a bad variable exit 1. */
function configFrom(flags: Partial<Record<SettingName, string>>, overrides: Partial<DaemonConfig> = {}): DaemonConfig {
  try {
    return loadConfig(overrides, { flags });
  } catch (e) {
    if (e instanceof SettingError && e.source === 'flag') throw new UsageError(e.message);
    throw e;
  }
}

export function registerDaemonCommands(program: Command): void {
  const serve = program.command('serve').description('run the Capsule daemon in the foreground (logs on stderr)');
  for (const name of SERVE_FLAGS) serve.option(...flagHelp(name));
  serve
    .option('--no-auth', 'accept requests without an API key (every caller is an admin; loopback only)')
    .option('--metrics-open', 'serve Prometheus text at /metrics without an API key (env CAPSULE_METRICS_OPEN; default: admin keys only)')
    .option(
      '--pool <template=size>',
      'keep <size> started sandboxes of <template> ready to claim, e.g. busybox=4; 0 = off (repeatable; env CAPSULE_POOL=busybox=4,debian=2; default without either: debian=2)',
      collect,
    )
    .option('--prebuild <templates>', 'build these built-in templates (comma-separated, e.g. debian) before listening, with a progress bar on stderr; npm start uses it for the default template')
    .action(async (opts: { host?: string; port?: string; dataDir?: string; runtime?: string; isolation?: string; logLevel?: string; auth: boolean; metricsOpen?: boolean; pool?: string[]; prebuild?: string }) => {
      const flags: Partial<Record<SettingName, string>> = {};
      for (const name of SERVE_FLAGS) if (opts[name] !== undefined) flags[name] = opts[name];
      const overrides: Partial<DaemonConfig> = {};
      if (!opts.auth) overrides.auth = false;
      if (opts.metricsOpen) overrides.metricsOpen = true;
      const config = configFrom(flags, overrides);
      if (!config.auth) {
        const by = opts.auth ? 'CAPSULE_NO_AUTH' : '--no-auth';
        process.stderr.write(`capsule: WARNING: ${by}: no API key is needed; anyone who reaches the port controls every sandbox\n`);
      }
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
      const prebuild = (opts.prebuild ?? '').split(',').map((s) => s.trim()).filter(Boolean);
      const { createProgressReporter } = await import('../../templates/progress.js');
      const bars = new Map<string, ReturnType<typeof createProgressReporter>>();
      let daemon;
      try {
        daemon = await startDaemon(config, {
          prebuild,
          onPrebuildProgress: (name, p) => {
            let bar = bars.get(name);
            if (!bar) {
              for (const b of bars.values()) b.stop();
              bar = createProgressReporter(process.stderr, { label: `template ${name}` });
              bars.set(name, bar);
            }
            bar(p);
          },
        });
      } finally {
        for (const b of bars.values()) b.stop();
      }
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
    .option(...flagHelp('runtime'))
    .option(...flagHelp('dataDir'))
    .action(async (opts: { fix?: boolean; json?: boolean; runtime?: string; dataDir?: string }) => {
      const { runDoctor } = await import('../../runtime/doctor.js');
      const flags: Partial<Record<SettingName, string>> = {};
      if (opts.runtime !== undefined) flags.runtime = opts.runtime;
      if (opts.dataDir !== undefined) flags.dataDir = opts.dataDir;
      const config = configFrom(flags);
      const checks = await runDoctor({
        runtime: config.runtime,
        fix: opts.fix === true,
        scratchDir: config.dataDir,
        dataDir: config.dataDir,
        idMapBase: config.idMapBase,
      });
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
