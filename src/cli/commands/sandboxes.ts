/** Sandbox lifecycle: create, list, info, kill, timeout; the backends a create may choose. */
import type { Command } from 'commander';
import { getDaemonInfo, Sandbox, type SandboxInfo } from '../../sdk/index.js';
import { ISOLATIONS } from '../../runtime/isolation.js';
import { SANDBOX_STATES } from '../../schemas/index.js';
import { ON_TIMEOUT, type OnTimeout } from '../../sandboxes/policy.js';
import { parseVolumeFlags } from './volumes.js';
import { egressOptions, networkFrom, type EgressFlags } from './net.js';
import { collect, connection, parseNumber, parsePairs, printJson, printTable, relativeTime, secondsToMs, shortTime, UsageError } from '../util.js';

export function registerSandboxCommands(program: Command): void {
  egressOptions(program
    .command('create')
    .description('start a sandbox and print its id'))
    .option('-t, --template <name>', 'template to start from (see `capsule template list`)')
    .option('--snapshot <ref>', 'start from a filesystem snapshot (id or name; see `capsule snapshot`) instead of a template')
    .option('--timeout <seconds>', 'lifetime before the sandbox is killed (default 300)')
    .option('-e, --env <KEY=VALUE>', 'environment variable for every command (repeatable)', collect)
    .option('-m, --metadata <KEY=VALUE>', 'metadata label (repeatable)', collect)
    .option('--cpus <n>', 'CPU limit in cores')
    .option('--memory <MiB>', 'memory limit in MiB')
    .option('--disk-mb <MiB>', 'disk quota in MiB for everything the sandbox writes (default 2048)')
    .option('--isolation <kind>', `${ISOLATIONS.join(', ')}: how it is kept apart from the host kernel (default: the daemon's; see \`capsule backends\`)`)
    .option('--on-timeout <action>', `what the timeout (or --idle) does: ${ON_TIMEOUT.join(', ')} (default kill)`)
    .option('--auto-resume', 'commands and file calls wake the sandbox when it is paused or stopped')
    .option('--idle <seconds>', 'apply --on-timeout after this long without API calls')
    .option('-v, --volume <NAME:/path[:ro]>', 'attach a named volume (repeatable; see `capsule volume`)', collect)
    .option('--delete-after <seconds>', 'delete it this long after it was paused or stopped (default: the daemon\'s, 7 days)')
    .option('--json', 'print the sandbox as JSON')
    .action(async (opts: EgressFlags & { template?: string; snapshot?: string; timeout?: string; env?: string[]; metadata?: string[]; cpus?: string; memory?: string; diskMb?: string; isolation?: string; onTimeout?: string; autoResume?: boolean; idle?: string; deleteAfter?: string; volume?: string[]; json?: boolean }, cmd: Command) => {
      if (opts.isolation !== undefined && !(ISOLATIONS as readonly string[]).includes(opts.isolation)) {
        throw new UsageError(`--isolation must be one of ${ISOLATIONS.join(', ')}`);
      }
      const resources: { cpus?: number; memoryMb?: number; diskMb?: number } = {};
      const cpus = parseNumber(opts.cpus, '--cpus');
      const memoryMb = parseNumber(opts.memory, '--memory');
      const diskMb = parseNumber(opts.diskMb, '--disk-mb');
      if (cpus !== undefined) resources.cpus = cpus;
      if (memoryMb !== undefined) resources.memoryMb = memoryMb;
      if (diskMb !== undefined) resources.diskMb = diskMb;
      if (opts.onTimeout !== undefined && !(ON_TIMEOUT as readonly string[]).includes(opts.onTimeout)) {
        throw new UsageError(`--on-timeout must be one of ${ON_TIMEOUT.join(', ')}`);
      }
      const lifecycle = {
        ...(opts.onTimeout !== undefined ? { onTimeout: opts.onTimeout as OnTimeout } : {}),
        ...(opts.autoResume ? { autoResume: true } : {}),
        ...(opts.idle !== undefined ? { idleMs: secondsToMs(opts.idle, '--idle') } : {}),
        ...(opts.deleteAfter !== undefined ? { deleteAfterMs: secondsToMs(opts.deleteAfter, '--delete-after') } : {}),
      };
      const sbx = await Sandbox.create({
        ...connection(cmd),
        template: opts.template,
        snapshot: opts.snapshot,
        timeoutMs: secondsToMs(opts.timeout, '--timeout'),
        envs: parsePairs(opts.env, '--env'),
        metadata: parsePairs(opts.metadata, '--metadata'),
        resources: Object.keys(resources).length ? resources : undefined,
        isolation: opts.isolation as SandboxInfo['isolation'] | undefined,
        lifecycle: Object.keys(lifecycle).length ? lifecycle : undefined,
        volumes: parseVolumeFlags(opts.volume),
        network: networkFrom(opts),
      });
      if (opts.json) printJson(await sbx.getInfo());
      else process.stdout.write(`${sbx.id}\n`);
    });

  program
    .command('list')
    .alias('ls')
    .description('list sandboxes (running ones unless --state says otherwise)')
    .option('-s, --state <state>', `${SANDBOX_STATES.join(', ')} or all (default: every live one)`)
    .option('-m, --metadata <KEY=VALUE>', 'only sandboxes with this metadata (repeatable)', collect)
    .option('--json', 'print a JSON array')
    .action(async (opts: { state?: string; metadata?: string[]; json?: boolean }, cmd: Command) => {
      const states: string[] = [...SANDBOX_STATES, 'all'];
      if (opts.state !== undefined && !states.includes(opts.state)) throw new UsageError(`--state must be one of ${states.join(', ')}`);
      const list = await Sandbox.list({
        ...connection(cmd),
        state: opts.state as SandboxInfo['state'] | 'all' | undefined,
        metadata: parsePairs(opts.metadata, '--metadata'),
      });
      if (opts.json) return printJson(list);
      printTable(
        ['id', 'template', 'state', 'created', 'expires'],
        // A paused or stopped sandbox's expiry is its retention: when it will be deleted.
        list.map((s) => [s.id, s.template, s.state, shortTime(s.createdAt), s.endedAt === undefined ? relativeTime(s.expiresAt) : '-']),
      );
    });

  program
    .command('info')
    .description('show one sandbox')
    .argument('<id>', 'sandbox id')
    .option('--json', 'print JSON')
    .action(async (id: string, opts: { json?: boolean }, cmd: Command) => {
      const info = await (await Sandbox.connect(id, connection(cmd))).getInfo();
      if (opts.json) return printJson(info);
      const rows: Array<[string, string]> = [
        ['id', info.id],
        ['template', info.template],
        ['state', info.state],
        ['isolation', info.isolation],
        ['created', shortTime(info.createdAt)],
        // Asleep, its expiry is its retention deadline.
        info.state === 'paused' || info.state === 'stopped' || info.state === 'hibernated'
          ? ['deleted', `${shortTime(info.expiresAt)} (${relativeTime(info.expiresAt)}) unless woken`]
          : ['expires', `${shortTime(info.expiresAt)} (${relativeTime(info.expiresAt)})`],
        [
          'resources',
          `${info.resources.cpus} cpus, ${info.resources.memoryMb} MiB, ${info.resources.pids} pids` +
            (info.resources.diskMb !== undefined ? `, ${info.resources.diskMb} MiB disk` : ''),
        ],
        ['metadata', Object.entries(info.metadata).map(([k, v]) => `${k}=${v}`).join(' ') || '-'],
        [
          'lifecycle',
          `on timeout ${info.lifecycle.onTimeout}${info.lifecycle.idleMs !== undefined ? ` (or after ${info.lifecycle.idleMs / 1000} s idle)` : ''}` +
            `${info.lifecycle.autoResume ? ', auto-resume' : ''}, kept ${Math.round(info.lifecycle.deleteAfterMs / 1000)} s when paused or stopped`,
        ],
      ];
      if (info.snapshot) rows.push(['snapshot', `${info.snapshot} (started from it)`]);
      if (info.volumes?.length) rows.push(['volumes', info.volumes.map((v) => `${v.name}:${v.path}${v.readOnly ? ':ro' : ''}`).join(' ')]);
      if (info.timeoutRemainingMs !== undefined) rows.push(['time left', `${Math.round(info.timeoutRemainingMs / 1000)} s when woken`]);
      if (info.endedAt) rows.push(['ended', `${shortTime(info.endedAt)}${info.endReason ? ` (${info.endReason})` : ''}`]);
      for (const [k, v] of rows) process.stdout.write(`${k.padEnd(10)} ${v}\n`);
    });

  program
    .command('backends')
    .description('which isolation kinds (container, gvisor, microvm) this daemon has, and why one is missing')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const info = await getDaemonInfo(connection(cmd));
      if (opts.json) return printJson(info.backends);
      printTable(
        ['isolation', 'available', 'backend', 'notes'],
        info.backends.map((b) => [
          b.isolation + (b.default ? ' (default)' : ''),
          b.available ? 'yes' : 'no',
          b.name ?? '-',
          b.available ? cannot(b.capabilities) : (b.reason ?? ''),
        ]),
      );
    });

  program
    .command('kill')
    .description('kill a sandbox and everything in it')
    .argument('<id>', 'sandbox id')
    .option('--json', 'print the sandbox as JSON')
    .action(async (id: string, opts: { json?: boolean }, cmd: Command) => {
      const info = await Sandbox.kill(id, connection(cmd));
      if (opts.json) printJson(info);
      else process.stdout.write(`${info.id} ${info.state}\n`);
    });

  program
    .command('timeout')
    .description("set a sandbox's remaining lifetime, counted from now")
    .argument('<id>', 'sandbox id')
    .argument('<seconds>', 'new lifetime in seconds')
    .option('--json', 'print the sandbox as JSON')
    .action(async (id: string, seconds: string, opts: { json?: boolean }, cmd: Command) => {
      const ms = secondsToMs(seconds, '<seconds>')!;
      const sbx = await Sandbox.connect(id, connection(cmd));
      const info = await sbx.setTimeout(ms);
      if (opts.json) printJson(info);
      else process.stdout.write(`${info.id} expires ${shortTime(info.expiresAt)} (${relativeTime(info.expiresAt)})\n`);
    });
}

/** "no pause, stop, volumes, egress" for a backend's missing optional capabilities. */
function cannot(
  c: { pause: boolean; stop: boolean; volumes: boolean; snapshot: boolean; updateResources: boolean; exportChanges: boolean; network: string[] } | undefined,
): string {
  if (!c) return '';
  const missing: string[] = (['pause', 'stop', 'volumes', 'snapshot', 'updateResources', 'exportChanges'] as const).filter((k) => !c[k]);
  if (!c.network.includes('gateway')) missing.push('egress');
  return missing.length > 0 ? `no ${missing.join(', ')}` : '';
}
