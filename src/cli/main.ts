/**
 * The `capsule` command line. Every command except `serve` and `doctor`
 * talks to a running daemon through the SDK (src/sdk), exactly as any user
 * program would.
 *
 * Exit codes: 0 ok; 1 an error (printed as `capsule: <code>: <message>`);
 * 2 a usage error; `exec` exits with the command's own exit code.
 */
import fs from 'node:fs';
import { Command, CommanderError } from 'commander';
import { isCapsuleError } from '../sdk/index.js';
import { registerDaemonCommands } from './commands/daemon.js';
import { registerExecCommand } from './commands/exec.js';
import { registerShellCommand } from './commands/shell.js';
import { registerLogsCommand } from './commands/logs.js';
import { registerTopCommand } from './commands/top.js';
import { registerCodeCommands } from './commands/code.js';
import { registerFileCommands } from './commands/files.js';
import { registerMcpCommand } from './commands/mcp.js';
import { registerSandboxCommands } from './commands/sandboxes.js';
import { registerLifecycleCommands } from './commands/lifecycle.js';
import { registerVolumeCommands } from './commands/volumes.js';
import { registerSnapshotCommands } from './commands/snapshots.js';
import { registerTemplateCommands } from './commands/templates.js';
import { registerKeyCommands } from './commands/keys.js';
import { registerNetCommands } from './commands/net.js';
import { UsageError } from './util.js';

/** The version in the repository's package.json (dist/src/cli/main.js → ../../../package.json). */
function version(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

export function buildProgram(): Command {
  const program = new Command('capsule')
    .description('Capsule: self-hosted code-execution sandboxes')
    .version(version())
    .option('--url <url>', 'daemon URL (env CAPSULE_URL, default http://127.0.0.1:7878)')
    .option('--api-key <key>', 'API key (env CAPSULE_API_KEY)')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerDaemonCommands(program);
  registerSandboxCommands(program);
  registerLifecycleCommands(program);
  registerExecCommand(program);
  registerShellCommand(program);
  registerTopCommand(program);
  registerLogsCommand(program);
  registerCodeCommands(program);
  registerFileCommands(program);
  registerTemplateCommands(program);
  registerMcpCommand(program);
  registerKeyCommands(program);
  registerVolumeCommands(program);
  registerSnapshotCommands(program);
  registerNetCommands(program);
  // Subcommands inherit exitOverride only when added after it is set on each; set it everywhere.
  const all = (c: Command): Command[] => [c, ...c.commands.flatMap(all)];
  for (const c of all(program)) c.exitOverride();
  return program;
}

function report(e: unknown): number {
  if (e instanceof CommanderError) {
    // Commander already printed the message (or the help / version).
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return 0;
    return e.exitCode === 0 ? 0 : 2;
  }
  if (e instanceof UsageError) {
    process.stderr.write(`capsule: invalid_argument: ${e.message}\n`);
    return 2;
  }
  if (isCapsuleError(e)) {
    process.stderr.write(`capsule: ${e.code}: ${e.message}\n`);
    return 1;
  }
  if (e instanceof Error && e.name === 'AbortError') {
    process.stderr.write('capsule: aborted\n');
    return 130;
  }
  const err = e as NodeJS.ErrnoException;
  if (err && typeof err.code === 'string' && typeof err.message === 'string' && err.syscall) {
    // A local filesystem or socket error (ENOENT on a local file and the like).
    process.stderr.write(`capsule: ${err.code === 'ENOENT' ? 'not_found' : 'invalid_argument'}: ${err.message}\n`);
    return 1;
  }
  process.stderr.write(`capsule: internal: ${e instanceof Error ? e.message : String(e)}\n`);
  if (process.env.CAPSULE_DEBUG && e instanceof Error) process.stderr.write(`${e.stack}\n`);
  return 1;
}

export async function main(argv: string[] = process.argv): Promise<void> {
  // `capsule files read ... | head` closes our stdout early: that is not an error.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw e;
  });
  try {
    await buildProgram().parseAsync(argv);
  } catch (e) {
    process.exitCode = report(e);
  }
}

await main();
