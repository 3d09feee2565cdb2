/** `capsule logs <id>`: a sandbox's log (lifecycle and command events), through the SDK. */
import type { Command } from 'commander';
import { Sandbox, type SandboxLogEntry, type SandboxLogLevel } from '../../sdk/index.js';
import { connection, parseNumber, shortTime, UsageError } from '../util.js';

const LEVELS = ['debug', 'info', 'warn', 'error'];

function line(e: SandboxLogEntry): string {
  return `${shortTime(e.at)} ${e.level.toUpperCase().padEnd(5)} ${e.message}`;
}

export function registerLogsCommand(program: Command): void {
  program
    .command('logs')
    .description("a sandbox's log: created, paused, resumed, stopped, killed, expired, failed; commands started and ended (exit codes, OOM kills)")
    .argument('<id>', 'sandbox id')
    .option('--since <cursor>', 'only entries after this cursor')
    .option('--level <level>', 'only this level and above: debug, info (default), warn, error')
    .option('-f, --follow', 'keep printing new entries (polls every second) until interrupted')
    .option('--json', 'one JSON entry per line')
    .action(async (id: string, opts: { since?: string; level?: string; follow?: boolean; json?: boolean }, cmd: Command) => {
      const level = (opts.level ?? 'info') as SandboxLogLevel;
      if (!LEVELS.includes(level)) throw new UsageError(`--level must be one of ${LEVELS.join(', ')}`);
      const sbx = await Sandbox.connect(id, connection(cmd));
      let cursor = parseNumber(opts.since, '--since') ?? 0;
      for (;;) {
        const page = await sbx.logs({ since: cursor, limit: 1000, level });
        for (const e of page.entries) process.stdout.write(opts.json ? `${JSON.stringify(e)}\n` : `${line(e)}\n`);
        cursor = page.cursor;
        if (page.entries.length === 1000) continue;
        if (!opts.follow) return;
        await new Promise((r) => setTimeout(r, 1000));
      }
    });
}
