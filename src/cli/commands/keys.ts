/** `capsule keys create|list|revoke`: API key management (needs an admin key). */
import type { Command } from 'commander';
import { connection, parseNumber, printJson, printTable } from '../util.js';
import { ApiKeys } from '../../sdk/index.js';

export function registerKeyCommands(program: Command): void {
  const keys = program.command('keys').description('create, list and revoke API keys (needs an admin key)');

  keys
    .command('create')
    .description('create a key and print it once (only its hash is stored)')
    .requiredOption('--name <name>', 'label of the key')
    .option('--owner <owner>', 'tenant the key acts for (default: the name)')
    .option('--admin', 'an admin key: sees everything and manages keys')
    .option('--max-sandboxes <n>', 'live sandboxes at once')
    .option('--max-memory <mb>', 'total memory of live sandboxes, MiB')
    .option('--rate <n>', 'requests per minute')
    .option('--e2b', "a key in E2B's format (e2b_<hex>), for E2B SDKs pointed at this daemon (E2B_API_KEY)")
    .option('--json', 'print JSON')
    .action(async (opts: { name: string; owner?: string; admin?: boolean; maxSandboxes?: string; maxMemory?: string; rate?: string; e2b?: boolean; json?: boolean }, cmd: Command) => {
      const limits: Record<string, number> = {};
      if (opts.maxSandboxes !== undefined) limits.maxSandboxes = parseNumber(opts.maxSandboxes, '--max-sandboxes')!;
      if (opts.maxMemory !== undefined) limits.maxMemoryMb = parseNumber(opts.maxMemory, '--max-memory')!;
      if (opts.rate !== undefined) limits.ratePerMinute = parseNumber(opts.rate, '--rate')!;
      const body = {
        name: opts.name,
        ...(opts.owner ? { owner: opts.owner } : {}),
        ...(opts.admin ? { admin: true } : {}),
        ...(opts.e2b ? { format: 'e2b' as const } : {}),
        ...(Object.keys(limits).length ? { limits } : {}),
      };
      const k = await ApiKeys.create(body, connection(cmd));
      if (opts.json) printJson(k);
      else process.stdout.write(`${k.key}\n`);
    });

  keys
    .command('list')
    .description('list keys (secrets are never shown)')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const list = await ApiKeys.list(connection(cmd));
      if (opts.json) return printJson(list);
      printTable(
        ['id', 'name', 'owner', 'admin', 'created', 'revoked'],
        list.map((k) => [k.id, k.name, k.owner, k.admin ? 'yes' : '', k.createdAt, k.revokedAt ?? '']),
      );
    });

  keys
    .command('revoke <keyId>')
    .description('revoke a key; it stops working at once')
    .option('--json', 'print JSON')
    .action(async (keyId: string, opts: { json?: boolean }, cmd: Command) => {
      const k = await ApiKeys.revoke(keyId, connection(cmd));
      if (opts.json) printJson(k);
      else process.stdout.write(`revoked ${k.id}\n`);
    });
}
