/** `capsule volume create|ls|rm`: named volumes, through the SDK. */
import type { Command } from 'commander';
import { Volume } from '../../sdk/index.js';
import { connection, parseNumber, printJson, printTable, shortTime, UsageError } from '../util.js';

/** `--volume name:/path[:ro]` of `capsule create`. */
export function parseVolumeFlags(values: string[] | undefined): Array<{ name: string; path: string; readOnly: boolean }> | undefined {
  if (!values?.length) return undefined;
  return values.map((v) => {
    const m = /^([^:]+):(\/[^:]*)(?::(ro|rw))?$/.exec(v);
    if (!m) throw new UsageError(`--volume must look like NAME:/path or NAME:/path:ro, got ${JSON.stringify(v)}`);
    return { name: m[1]!, path: m[2]!, readOnly: m[3] === 'ro' };
  });
}

export function registerVolumeCommands(program: Command): void {
  const volume = program.command('volume').description('named persistent volumes that sandboxes attach (create --volume NAME:/path[:ro])');

  volume
    .command('create')
    .description('create a volume: its own disk of --size-mb (default 1024)')
    .argument('<name>', 'volume name')
    .option('--size-mb <MiB>', 'disk quota in MiB')
    .option('--json', 'print JSON')
    .action(async (name: string, opts: { sizeMb?: string; json?: boolean }, cmd: Command) => {
      const sizeMb = parseNumber(opts.sizeMb, '--size-mb');
      const v = await Volume.create({ ...connection(cmd), name, ...(sizeMb !== undefined ? { sizeMb } : {}) });
      if (opts.json) printJson(v);
      else process.stdout.write(`${v.name}\n`);
    });

  volume
    .command('ls')
    .alias('list')
    .description('list volumes and the sandboxes that attach them')
    .option('--json', 'print a JSON array')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const list = await Volume.list(connection(cmd));
      if (opts.json) return printJson(list);
      printTable(
        ['name', 'size', 'created', 'used by'],
        list.map((v) => [v.name, `${v.sizeMb} MiB`, shortTime(v.createdAt), v.usedBy.join(' ') || '-']),
      );
    });

  volume
    .command('rm')
    .description('delete a volume and its data (refused while a sandbox attaches it)')
    .argument('<name>', 'volume name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      await Volume.delete(name, connection(cmd));
      process.stdout.write(`${name} deleted\n`);
    });
}
