/**
 * `capsule snapshot create <id>` (or `capsule snapshot <id>`) takes a filesystem snapshot of a
 * sandbox; `capsule snapshot ls|inspect|rm` manage them; `capsule create --snapshot REF` starts a
 * sandbox from one. All through the SDK.
 */
import type { Command } from 'commander';
import { Sandbox, Snapshot, type SnapshotInfo } from '../../sdk/index.js';
import { collect, connection, humanSize, parsePairs, printJson, printTable, shortTime, UsageError } from '../util.js';

function describe(s: SnapshotInfo): Array<[string, string]> {
  return [
    ['id', s.id],
    ['name', s.name ?? '-'],
    ['sandbox', s.sandboxId],
    ['template', s.template],
    ...(s.parentSnapshot ? [['parent', s.parentSnapshot] as [string, string]] : []),
    ['size', humanSize(s.sizeBytes)],
    ['layers', String(s.layers)],
    ['created', shortTime(s.createdAt)],
    ['metadata', Object.entries(s.metadata).map(([k, v]) => `${k}=${v}`).join(' ') || '-'],
    ['used by', s.usedBy.join(' ') || '-'],
  ];
}

/** `--json` after a subcommand is parsed as `snapshot`'s own option (same name): read both. */
const json = (cmd: Command): boolean => cmd.optsWithGlobals<{ json?: boolean }>().json === true;

interface TakeFlags {
  name?: string;
  metadata?: string[];
}

async function take(id: string, cmd: Command): Promise<void> {
  // `snapshot` and `snapshot create` share these flags, and either may have parsed them: read both.
  const opts = cmd.optsWithGlobals<TakeFlags>();
  const sbx = await Sandbox.connect(id, connection(cmd));
  const metadata = parsePairs(opts.metadata, '--metadata');
  const s = await sbx.snapshot({ ...(opts.name !== undefined ? { name: opts.name } : {}), ...(metadata ? { metadata } : {}) });
  if (json(cmd)) printJson(s);
  else process.stdout.write(`${s.id}\n`);
}

const takeOptions = (c: Command): Command =>
  c
    .option('--name <name>', 'a name for it, unique among your snapshots')
    .option('-m, --metadata <KEY=VALUE>', 'metadata label (repeatable)', collect)
    .option('--json', 'print the snapshot as JSON');

export function registerSnapshotCommands(program: Command): void {
  const snapshot = takeOptions(
    program
      .command('snapshot')
      .description("snapshot a sandbox's files (start sandboxes from it: create --snapshot REF): snapshot create|ls|inspect|rm")
      .argument('[id]', 'sandbox to snapshot (running or paused); same as `snapshot create <id>`'),
  ).action(async (id: string | undefined, _opts: unknown, cmd: Command) => {
    if (id === undefined) throw new UsageError('capsule snapshot create <sandbox id> [--name NAME], or capsule snapshot ls|inspect|rm');
    await take(id, cmd);
  });

  takeOptions(
    snapshot
      .command('create')
      .description('take a filesystem snapshot of a running or paused sandbox and print its id')
      .argument('<id>', 'sandbox to snapshot'),
  ).action(async (id: string, _opts: unknown, cmd: Command) => take(id, cmd));

  snapshot
    .command('ls')
    .alias('list')
    .description('list your snapshots')
    .option('--sandbox <id>', 'only snapshots of this sandbox')
    .option('--json', 'print a JSON array')
    .action(async (opts: { sandbox?: string }, cmd: Command) => {
      const list = await Snapshot.list({ ...connection(cmd), ...(opts.sandbox !== undefined ? { sandboxId: opts.sandbox } : {}) });
      if (json(cmd)) return printJson(list);
      printTable(
        ['id', 'name', 'template', 'size', 'created', 'used by'],
        list.map((s) => [s.id, s.name ?? '-', s.template, humanSize(s.sizeBytes), shortTime(s.createdAt), s.usedBy.join(' ') || '-']),
      );
    });

  snapshot
    .command('inspect')
    .description('show one snapshot')
    .argument('<ref>', 'snapshot id or name')
    .option('--json', 'print JSON')
    .action(async (ref: string, _opts: unknown, cmd: Command) => {
      const s = await Snapshot.get(ref, connection(cmd));
      if (json(cmd)) return printJson(s);
      for (const [k, v] of describe(s)) process.stdout.write(`${k.padEnd(9)} ${v}\n`);
    });

  snapshot
    .command('rm')
    .description('delete a snapshot (refused while a sandbox started from it lives)')
    .argument('<ref>', 'snapshot id or name')
    .action(async (ref: string, _opts: unknown, cmd: Command) => {
      await Snapshot.delete(ref, connection(cmd));
      process.stdout.write(`${ref} deleted\n`);
    });
}
