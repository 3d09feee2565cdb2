/**
 * `capsule exec <id> -- cmd args...`: run an argv (no shell) in a sandbox,
 * stream its output to ours as it comes, and exit with its exit code.
 * When our stdin is a pipe or a file, it is fed to the command.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { Sandbox, type CommandResult, type RunOptions } from '../../sdk/index.js';
import { collect, connection, parsePairs, secondsToMs, writeOut } from '../util.js';

/** Feed our stdin only when it is data (pipe, file, socket), not a terminal or /dev/null. */
function stdinHasData(): boolean {
  if (process.stdin.isTTY) return false;
  try {
    const st = fs.fstatSync(0);
    return st.isFIFO() || st.isFile() || st.isSocket();
  } catch {
    return false;
  }
}

interface ExecOptions {
  cwd?: string;
  env?: string[];
  user?: string;
  timeout?: string;
  stdin: boolean;
}

export function registerExecCommand(program: Command): void {
  program
    .command('exec')
    .description('run a command in a sandbox (argv form, no shell) and exit with its exit code')
    .argument('<id>', 'sandbox id')
    .argument('<cmd...>', 'command and arguments; put them after -- (e.g. -- sh -c "echo hi")')
    .option('--cwd <dir>', 'working directory inside the sandbox')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect)
    .option('-u, --user <user>', 'user name or uid inside the sandbox')
    .option('--timeout <seconds>', 'kill the command after this long; 0 for no limit (default 60)')
    .option('--no-stdin', 'do not feed our stdin to the command')
    .action(async (id: string, argv: string[], opts: ExecOptions, cmd: Command) => {
      const sbx = await Sandbox.connect(id, connection(cmd));
      const abort = new AbortController();
      let interrupted = 0;
      const onSignal = (sig: NodeJS.Signals) => {
        interrupted = sig === 'SIGINT' ? 130 : 143;
        abort.abort();
      };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      const base: Omit<RunOptions, 'background'> = {
        cwd: opts.cwd,
        user: opts.user,
        envs: parsePairs(opts.env, '--env'),
        timeoutMs: secondsToMs(opts.timeout, '--timeout'),
        onStdout: (d) => writeOut(process.stdout, d),
        onStderr: (d) => writeOut(process.stderr, d),
      };
      let result: CommandResult;
      try {
        result = opts.stdin && stdinHasData() ? await runWithStdin(sbx, argv, base, abort.signal) : await sbx.commands.run(argv, { ...base, signal: abort.signal });
      } catch (e) {
        if (interrupted) {
          process.exitCode = interrupted;
          return;
        }
        throw e;
      } finally {
        process.removeListener('SIGINT', onSignal);
        process.removeListener('SIGTERM', onSignal);
      }
      if (result.timedOut) process.stderr.write(`capsule: timeout: the command was killed after its timeout${opts.timeout ? ` (${opts.timeout} s)` : ''}\n`);
      process.exitCode = result.exitCode;
    });
}

/**
 * Start in the background, pump our stdin into the process while following
 * its output, and close its stdin at our EOF. Output and exit work as in the
 * foreground case.
 */
async function runWithStdin(sbx: Sandbox, argv: string[], base: Omit<RunOptions, 'background'>, signal: AbortSignal): Promise<CommandResult> {
  const handle = await sbx.commands.run(argv, {
    ...base,
    // Background commands have no default limit; keep the foreground one.
    timeoutMs: base.timeoutMs ?? 60_000,
    background: true,
    signal,
  });
  const onAbort = () => void handle.kill().catch(() => {});
  signal.addEventListener('abort', onAbort, { once: true });
  let exited = false;
  const pump = (async () => {
    for await (const chunk of process.stdin) {
      if (exited) return;
      await handle.sendStdin(chunk as Uint8Array);
    }
    if (!exited) await handle.sendStdin('', { eof: true });
  })().catch(() => {
    // The process may exit (and close its stdin) before we are done: not an error.
  });
  try {
    const result = await handle.wait({ signal });
    return result;
  } finally {
    exited = true;
    signal.removeEventListener('abort', onAbort);
    if (signal.aborted) handle.disconnect();
    process.stdin.destroy();
    await Promise.race([pump, new Promise((r) => setTimeout(r, 100))]);
  }
}
