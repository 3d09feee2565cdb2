/**
 * `capsule top`: live sandboxes with their latest CPU, memory, disk and pids
 * (the daemon's samples), refreshed in place on a terminal; `--once` (or a
 * pipe) prints one table.
 */
import type { Command } from 'commander';
import { Sandbox, type SandboxMetric } from '../../sdk/index.js';
import { connection, humanSize, printJson, printTable, secondsToMs } from '../util.js';

function row(id: string, template: string, m: SandboxMetric | undefined): string[] {
  if (!m) return [id, template, '-', '-', '-', '-'];
  const pct = (used: number, limit: number) => (limit > 0 ? ` (${Math.round((used / limit) * 100)}%)` : '');
  return [
    id,
    template,
    `${m.cpuUsedPct.toFixed(1)}% / ${m.cpuLimitPct}%`,
    `${humanSize(m.memUsedBytes)} / ${humanSize(m.memLimitBytes)}${pct(m.memUsedBytes, m.memLimitBytes)}`,
    `${humanSize(m.diskUsedBytes)} / ${humanSize(m.diskQuotaBytes)}`,
    `${m.pids}`,
  ];
}

export function registerTopCommand(program: Command): void {
  program
    .command('top')
    .description('live sandboxes with their CPU, memory, disk and pids (as sampled by the daemon)')
    .option('--interval <seconds>', 'refresh every so many seconds (default 2)')
    .option('--once', 'print once and exit (the default when stdout is not a terminal)')
    .option('--json', 'print the latest sample of each sandbox as JSON, once')
    .action(async (opts: { interval?: string; once?: boolean; json?: boolean }, cmd: Command) => {
      const c = connection(cmd);
      const every = secondsToMs(opts.interval, '--interval') ?? 2000;
      const once = opts.once || opts.json || !process.stdout.isTTY;
      for (;;) {
        const list = await Sandbox.list({ ...c, state: 'running' });
        const latest = await Promise.all(
          list.map(async (s) => {
            const sbx = await Sandbox.connect(s.id, c).catch(() => undefined);
            const ms = sbx ? await sbx.getMetrics({ start: new Date(Date.now() - 60_000) }).catch(() => []) : [];
            return { id: s.id, template: s.template, metrics: ms.at(-1) };
          }),
        );
        if (opts.json) return printJson(latest);
        if (!once) process.stdout.write('\x1b[H\x1b[2J');
        printTable(['id', 'template', 'cpu', 'memory', 'disk', 'pids'], latest.map((l) => row(l.id, l.template, l.metrics)));
        if (once) return;
        await new Promise((r) => setTimeout(r, every));
      }
    });
}
