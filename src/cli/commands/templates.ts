/** `capsule template list|build`. */
import type { Command } from 'commander';
import { Template } from '../../sdk/index.js';
import { createProgressReporter } from '../../templates/progress.js';
import { connection, humanSize, printJson, printTable, shortTime } from '../util.js';

export function registerTemplateCommands(program: Command): void {
  const template = program.command('template').alias('templates').description('list and build sandbox templates');

  template
    .command('list')
    .alias('ls')
    .description('list templates and whether they are built')
    .option('--json', 'print a JSON array')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const list = await Template.list(connection(cmd));
      if (opts.json) return printJson(list);
      printTable(
        ['name', 'status', 'size', 'built', 'description'],
        list.map((t) => [t.name, t.status, humanSize(t.sizeBytes), shortTime(t.builtAt), t.error ? `${t.description} (error: ${t.error})` : t.description]),
      );
    });

  template
    .command('build')
    .description('build a template (progress on stderr)')
    .argument('<name>', 'template name')
    .option('-f, --force', 'rebuild even if it is already built')
    .option('--json', 'print the built template as JSON')
    .action(async (name: string, opts: { force?: boolean; json?: boolean }, cmd: Command) => {
      const progress = createProgressReporter(process.stderr, { label: name });
      let info;
      try {
        info = await Template.build(name, { ...connection(cmd), force: opts.force === true, onProgress: progress });
      } finally {
        progress.stop();
      }
      if (opts.json) printJson(info);
      else process.stdout.write(`${info.name} ${info.status}${info.sizeBytes !== undefined ? ` (${humanSize(info.sizeBytes)})` : ''}\n`);
    });
}
