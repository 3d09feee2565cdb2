/**
 * Networking: `capsule net get|set|log <id>` and `capsule port <id> <port>`, through the SDK.
 * The policy flags are shared with `capsule create` (egressFrom).
 */
import type { Command } from 'commander';
import { Sandbox, type EgressPolicy, type NetworkConfig, type NetworkLogEntry, type PublicPorts } from '../../sdk/index.js';
import { collect, connection, parseNumber, printJson, shortTime, UsageError } from '../util.js';

export interface EgressFlags {
  egress?: string;
  allow?: string[];
  deny?: string[];
  publicPort?: string[];
}

/** Adds --egress, --allow, --deny and --public-port to a command. */
export function egressOptions(c: Command): Command {
  return c
    .option('--egress <mode>', 'none (loopback only) or all (any public address)')
    .option('--allow <rule>', 'allow a destination: example.com, *.example.com, 10.0.0.0/8, *, with optional :ports (repeatable)', collect)
    .option('--deny <rule>', 'refuse a destination even when allowed (repeatable)', collect)
    .option('--public-port <port>', "a port whose URL needs no token (repeatable); 'all' for every port, 'none' for no port", collect);
}

/** The network settings the flags ask for, or undefined when none was given. */
export function networkFrom(f: EgressFlags): NetworkConfig | undefined {
  let egress: EgressPolicy | undefined;
  if (f.egress !== undefined) {
    if (f.egress !== 'none' && f.egress !== 'all') throw new UsageError('--egress must be none or all (or give --allow rules)');
    if (f.allow?.length) throw new UsageError('give either --egress or --allow, not both');
    egress = f.egress;
  }
  if (f.allow?.length || f.deny?.length) {
    if (!f.allow?.length) throw new UsageError('--deny needs at least one --allow (or use --allow "*" for all public addresses)');
    egress = { allow: f.allow, ...(f.deny?.length ? { deny: f.deny } : {}) };
  }
  const publicPorts = publicPortsFrom(f.publicPort);
  if (egress === undefined && publicPorts === undefined) return undefined;
  return { ...(egress !== undefined ? { egress } : {}), ...(publicPorts ? { publicPorts } : {}) };
}

/** `--public-port 3000 --public-port 8080`, `--public-port all` (every port) or `--public-port none`. */
function publicPortsFrom(values: string[] | undefined): PublicPorts | undefined {
  if (values === undefined) return undefined;
  const words = values.filter((v) => v === 'all' || v === 'none');
  if (words.length > 0) {
    if (values.length > 1) throw new UsageError(`--public-port ${words[0]} cannot be combined with other --public-port values`);
    return words[0] === 'all' ? 'all' : [];
  }
  return values.map((p) => parseNumber(p, '--public-port')!);
}

export function describePublic(p: PublicPorts): string {
  return p === 'all' ? 'all ports' : p.join(' ') || '-';
}

function describeEgress(e: EgressPolicy): string {
  if (typeof e === 'string') return e;
  return `allow ${e.allow.join(' ')}${e.deny?.length ? `; deny ${e.deny.join(' ')}` : ''}`;
}

function logLine(e: NetworkLogEntry): string {
  const who = e.command ? `${e.command}[${e.pid ?? '?'}]` : '-';
  const where = e.protocol === 'dns' ? `dns ${e.name}` : `${e.name ? `${e.name} ` : ''}${e.address ?? '?'}:${e.port}`;
  const bytes = e.protocol === 'tcp' && e.verdict === 'allowed' ? ` ↑${e.bytesUp} ↓${e.bytesDown}${e.state === 'open' ? ' open' : ` ${e.durationMs}ms`}` : '';
  return `${shortTime(e.at)} ${e.verdict === 'allowed' ? 'ALLOW' : 'DENY '} ${where} ${who} (${e.rule})${bytes}`;
}

export function registerNetCommands(program: Command): void {
  const net = program.command('net').description("a sandbox's egress policy, public ports and egress ledger");

  net
    .command('get')
    .description('show the egress policy and public ports')
    .argument('<id>', 'sandbox id')
    .option('--json', 'print JSON')
    .action(async (id: string, opts: { json?: boolean }, cmd: Command) => {
      const n = await (await Sandbox.connect(id, connection(cmd))).network.get();
      if (opts.json) return printJson(n);
      process.stdout.write(`egress   ${describeEgress(n.egress)}\npublic   ${describePublic(n.publicPorts)}\ngateway  ${n.gateway ? `yes (DNS ${n.resolver})` : 'no'}\n`);
    });

  egressOptions(
    net
      .command('set')
      .description('change the egress policy and/or public ports of a running sandbox (new connections follow at once)')
      .argument('<id>', 'sandbox id'),
  )
    .option('--json', 'print JSON')
    .action(async (id: string, opts: EgressFlags & { json?: boolean }, cmd: Command) => {
      const cfg = networkFrom(opts);
      if (!cfg) throw new UsageError('say what to change: --egress none|all, --allow/--deny rules or --public-port');
      const n = await (await Sandbox.connect(id, connection(cmd))).network.set(cfg);
      if (opts.json) return printJson(n);
      process.stdout.write(`egress   ${describeEgress(n.egress)}\npublic   ${describePublic(n.publicPorts)}\n`);
    });

  net
    .command('log')
    .description("the sandbox's egress ledger: connections and DNS lookups with verdict, rule and bytes")
    .argument('<id>', 'sandbox id')
    .option('-f, --follow', 'keep printing new entries until interrupted')
    .option('--since <cursor>', 'only entries after this cursor')
    .option('--json', 'one JSON entry per line')
    .action(async (id: string, opts: { follow?: boolean; since?: string; json?: boolean }, cmd: Command) => {
      const sbx = await Sandbox.connect(id, connection(cmd));
      const since = parseNumber(opts.since, '--since') ?? 0;
      const print = (e: NetworkLogEntry) => process.stdout.write(opts.json ? `${JSON.stringify(e)}\n` : `${logLine(e)}\n`);
      if (!opts.follow) {
        let cursor = since;
        for (;;) {
          const page = await sbx.network.log({ since: cursor, limit: 1000 });
          page.entries.forEach(print);
          if (page.entries.length < 1000) return;
          cursor = page.cursor;
        }
      }
      const ac = new AbortController();
      process.once('SIGINT', () => ac.abort());
      for await (const e of sbx.network.follow({ since, signal: ac.signal })) print(e);
    });

  program
    .command('port')
    .description('URLs of a port inside a sandbox (forwarded by the daemon, HTTP and WebSocket), its token and a signed URL')
    .argument('<id>', 'sandbox id')
    .argument('<port>', 'TCP port the server inside listens on')
    .option('--ttl <seconds>', 'how long the signed URL stays valid (default 3600)')
    .option('--json', 'print JSON')
    .action(async (id: string, portText: string, opts: { ttl?: string; json?: boolean }, cmd: Command) => {
      const port = parseNumber(portText, '<port>')!;
      const ttl = parseNumber(opts.ttl, '--ttl');
      const a = await (await Sandbox.connect(id, connection(cmd))).network.port(port, ttl !== undefined ? { ttlMs: ttl * 1000 } : {});
      if (opts.json) return printJson(a);
      process.stdout.write(
        `url        ${a.url}\npath url   ${a.pathUrl}\nsigned url ${a.signedUrl} (until ${shortTime(a.expiresAt)})\n` +
          (a.public ? 'public     yes (no token needed)\n' : `token      ${a.token} (header X-Capsule-Port-Token)\n`),
      );
    });
}
