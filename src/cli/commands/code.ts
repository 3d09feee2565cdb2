/**
 * `capsule code <id> -- '<code>'`: run a cell in a sandbox's code context and
 * print what a notebook would show: stdout as it comes, then each result's
 * text; images go to files with --out DIR. Exits 1 when the cell raised.
 * `capsule code-context create|ls|restart|rm` manages contexts.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { Sandbox, type CodeLanguage, type CodeResult, type Execution } from '../../sdk/index.js';
import { collect, connection, parsePairs, printJson, printTable, secondsToMs, shortTime, UsageError, writeOut } from '../util.js';

const LANGUAGES = ['python', 'javascript', 'typescript', 'bash'];

interface CodeOptions {
  language?: string;
  context?: string;
  json?: boolean;
  out?: string;
  timeout?: string;
  env?: string[];
}

function language(v: string | undefined): CodeLanguage | undefined {
  if (v === undefined) return undefined;
  if (!LANGUAGES.includes(v)) throw new UsageError(`--language must be one of ${LANGUAGES.join(', ')}`);
  return v as CodeLanguage;
}

async function readStdin(): Promise<string> {
  const parts: Buffer[] = [];
  for await (const chunk of process.stdin) parts.push(chunk as Buffer);
  return Buffer.concat(parts).toString('utf8');
}

/** Files for a result's images and documents, named by the cell's number and the result's place. */
const FILES: Array<[keyof CodeResult, string, 'base64' | 'utf8']> = [
  ['png', 'png', 'base64'],
  ['jpeg', 'jpg', 'base64'],
  ['svg', 'svg', 'utf8'],
];

async function saveResult(r: CodeResult, dir: string, stem: string): Promise<string[]> {
  const saved: string[] = [];
  for (const [field, ext, enc] of FILES) {
    const v = r[field];
    if (typeof v !== 'string') continue;
    const file = path.join(dir, `${stem}.${ext}`);
    await fs.writeFile(file, Buffer.from(v, enc));
    saved.push(file);
  }
  return saved;
}

/** What the terminal shows for one result: its text, or where its picture went. */
async function showResult(r: CodeResult, n: number, opts: CodeOptions, count: number | undefined): Promise<void> {
  const hasPicture = r.png !== undefined || r.jpeg !== undefined || r.svg !== undefined;
  if (hasPicture && opts.out) {
    await fs.mkdir(opts.out, { recursive: true });
    for (const f of await saveResult(r, opts.out, `cell${count ?? 0}-${n}`)) process.stderr.write(`capsule: saved ${f}\n`);
  } else if (hasPicture) {
    const kind = r.png !== undefined ? 'image/png' : r.jpeg !== undefined ? 'image/jpeg' : 'image/svg+xml';
    process.stderr.write(`capsule: a ${kind} result (use --out DIR to save it)\n`);
  }
  if (!hasPicture || r.isMainResult) {
    const text = r.text ?? (r.json !== undefined ? JSON.stringify(r.json, null, 2) : r.markdown ?? r.html);
    if (text !== undefined) await writeOut(process.stdout, text.endsWith('\n') ? text : `${text}\n`);
  }
}

export function registerCodeCommands(program: Command): void {
  program
    .command('code')
    .description('run code in a stateful context (python, javascript, typescript, bash): variables persist between calls')
    .argument('<id>', 'sandbox id')
    .argument('[code...]', "the code, after -- (e.g. -- 'import math; math.factorial(20)'); none or - reads stdin")
    .option('-l, --language <language>', `${LANGUAGES.join(', ')} (default python, or the context's)`)
    .option('-c, --context <id>', "context id (default: the sandbox's default context of the language)")
    .option('--json', 'print the whole result as JSON')
    .option('-o, --out <dir>', 'write image results (png, jpeg, svg) to files in this directory')
    .option('--timeout <seconds>', 'interrupt the cell after this long; 0 for no limit (default 60)')
    .option('-e, --env <KEY=VALUE>', 'environment variable for this cell (repeatable)', collect)
    .action(async (id: string, parts: string[], opts: CodeOptions, cmd: Command) => {
      const code = parts.length === 0 || (parts.length === 1 && parts[0] === '-') ? await readStdin() : parts.join(' ');
      const sbx = await Sandbox.connect(id, connection(cmd));
      const abort = new AbortController();
      const onSignal = () => abort.abort();
      process.once('SIGINT', onSignal);
      let n = 0;
      let exec: Execution;
      try {
        exec = await sbx.runCode(code, {
          language: language(opts.language),
          ...(opts.context ? { context: opts.context } : {}),
          envs: parsePairs(opts.env, '--env'),
          timeoutMs: secondsToMs(opts.timeout, '--timeout'),
          signal: abort.signal,
          ...(opts.json
            ? {}
            : {
                onStdout: (d: string) => writeOut(process.stdout, d),
                onStderr: (d: string) => writeOut(process.stderr, d),
              }),
        });
      } catch (e) {
        if (abort.signal.aborted) {
          process.exitCode = 130;
          return;
        }
        throw e;
      } finally {
        process.removeListener('SIGINT', onSignal);
      }
      if (opts.json) {
        if (opts.out) for (const r of exec.results) await fs.mkdir(opts.out, { recursive: true }).then(() => saveResult(r, opts.out!, `cell${exec.executionCount ?? 0}-${++n}`));
        printJson(exec);
      } else {
        for (const r of exec.results) await showResult(r, ++n, opts, exec.executionCount);
        if (exec.error) process.stderr.write(`${exec.error.traceback.length ? exec.error.traceback.join('\n') : `${exec.error.name}: ${exec.error.value}`}\n`);
        if (exec.interrupted) {
          process.stderr.write(
            `capsule: the cell was interrupted (${exec.interrupted.reason}); ${exec.interrupted.how === 'signal' ? 'the context kept its state' : 'the interpreter was restarted and its state is gone'}\n`,
          );
        }
      }
      if (exec.interrupted?.reason === 'timeout') process.exitCode = 124;
      else if (exec.error) process.exitCode = 1;
    });

  const ctx = program.command('code-context').description('manage code contexts (long-lived interpreters) of a sandbox');
  ctx
    .command('create')
    .argument('<id>', 'sandbox id')
    .option('-l, --language <language>', LANGUAGES.join(', '), 'python')
    .option('--cwd <dir>', 'working directory of the interpreter')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect)
    .option('--json', 'print JSON')
    .description('start a new context and print its id')
    .action(async (id: string, opts: { language: string; cwd?: string; env?: string[]; json?: boolean }, cmd: Command) => {
      const sbx = await Sandbox.connect(id, connection(cmd));
      const c = await sbx.createCodeContext({ language: language(opts.language)!, ...(opts.cwd ? { cwd: opts.cwd } : {}), ...(opts.env ? { envs: parsePairs(opts.env, '--env')! } : {}) });
      if (opts.json) printJson(c);
      else process.stdout.write(`${c.id}\n`);
    });
  ctx
    .command('ls')
    .argument('<id>', 'sandbox id')
    .option('--json', 'print JSON')
    .description("list a sandbox's contexts")
    .action(async (id: string, opts: { json?: boolean }, cmd: Command) => {
      const sbx = await Sandbox.connect(id, connection(cmd));
      const list = await sbx.listCodeContexts();
      if (opts.json) return printJson(list);
      printTable(
        ['ID', 'LANGUAGE', 'DEFAULT', 'CELLS', 'RESTARTS', 'CREATED'],
        list.map((c) => [c.id, c.language, c.default ? 'yes' : '', String(c.executionCount), String(c.restarts), shortTime(c.createdAt)]),
      );
    });
  ctx
    .command('restart')
    .argument('<id>', 'sandbox id')
    .argument('<context>', 'context id')
    .description('restart a context (its state is lost)')
    .action(async (id: string, context: string, _opts: unknown, cmd: Command) => {
      const sbx = await Sandbox.connect(id, connection(cmd));
      await sbx.restartCodeContext(context);
    });
  ctx
    .command('rm')
    .argument('<id>', 'sandbox id')
    .argument('<context>', 'context id')
    .description('remove a context')
    .action(async (id: string, context: string, _opts: unknown, cmd: Command) => {
      const sbx = await Sandbox.connect(id, connection(cmd));
      await sbx.removeCodeContext(context);
    });
}
