/**
 * `capsule files ...` and `capsule cp`: the sandbox filesystem. Reads and
 * writes stream in both directions; nothing is held whole in memory.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import { InvalidArgumentError, NotFoundError, Sandbox, schemas, type FileEntry } from '../../sdk/index.js';
import { connection, humanSize, parseNumber, printJson, printTable, shortTime, UsageError, writeOut } from '../util.js';

/** `--meta key=value`, repeatable, into one object (the first value of a key wins, as with E2B's headers). */
function collectMeta(kv: string, prev: Record<string, string> | undefined): Record<string, string> {
  const at = kv.indexOf('=');
  if (at <= 0) throw new UsageError(`--meta takes key=value, got ${JSON.stringify(kv)}`);
  const out = { ...prev };
  const key = kv.slice(0, at).toLowerCase(); // keys are stored lowercased: Owner and owner are one key
  if (!(key in out)) out[key] = kv.slice(at + 1);
  return out;
}

const TYPE_CHAR: Record<FileEntry['type'], string> = {
  file: '-',
  dir: 'd',
  symlink: 'l',
  fifo: 'p',
  socket: 's',
  char: 'c',
  block: 'b',
  unknown: '?',
};

/** st_mode → "drwxr-xr-x". */
export function modeString(e: Pick<FileEntry, 'type' | 'mode'>): string {
  const bits = 'rwxrwxrwx';
  let perms = '';
  for (let i = 0; i < 9; i++) perms += e.mode & (1 << (8 - i)) ? bits[i] : '-';
  return TYPE_CHAR[e.type] + perms;
}

/** Copy a web stream of bytes to our stdout, honouring backpressure. */
async function toStdout(stream: ReadableStream<Uint8Array>): Promise<void> {
  for await (const chunk of stream as unknown as AsyncIterable<Uint8Array>) await writeOut(process.stdout, chunk);
}

export function registerFileCommands(program: Command): void {
  const files = program.command('files').description('read, write and list files in a sandbox');

  files
    .command('read')
    .alias('cat')
    .description('write a file from the sandbox to stdout (streamed)')
    .argument('<id>', 'sandbox id')
    .argument('<path>', 'path inside the sandbox')
    .action(async (id: string, p: string, _opts: unknown, cmd: Command) => {
      const sbx = await Sandbox.connect(id, connection(cmd));
      await toStdout(await sbx.files.read(p, { format: 'stream' }));
    });

  files
    .command('write')
    .description('write stdin to a file in the sandbox (streamed; parent directories are created)')
    .argument('<id>', 'sandbox id')
    .argument('<path>', 'path inside the sandbox')
    .option('--mode <octal>', 'permission bits, e.g. 755')
    .option('--meta <key=value>', 'file metadata (repeat for more keys); replaces what the file had', collectMeta, undefined)
    .option('--json', 'print {path, size} as JSON')
    .action(async (id: string, p: string, opts: { mode?: string; meta?: Record<string, string>; json?: boolean }, cmd: Command) => {
      const sbx = await Sandbox.connect(id, connection(cmd));
      const res = await sbx.files.write(p, process.stdin, { mode: opts.mode, ...(opts.meta ? { metadata: opts.meta } : {}) });
      if (opts.json) printJson(res);
      else process.stderr.write(`wrote ${res.size} bytes to ${res.path}\n`);
    });

  files
    .command('watch')
    .description('print changes under a directory as they happen (create, write, remove, rename, chmod), until Ctrl-C')
    .argument('<id>', 'sandbox id')
    .argument('<path>', 'directory inside the sandbox')
    .option('-r, --recursive', 'also watch every directory below, including ones made later')
    .option('--json', 'one JSON event per line')
    .action(async (id: string, p: string, opts: { recursive?: boolean; json?: boolean }, cmd: Command) => {
      const sbx = await Sandbox.connect(id, connection(cmd));
      const stop = new AbortController();
      const onSignal = () => stop.abort();
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      try {
        const w = await sbx.files.watchDir(
          p,
          async (ev) => {
            if (opts.json) await writeOut(process.stdout, `${JSON.stringify(ev)}\n`);
            else if (ev.type === 'overflow') await writeOut(process.stdout, 'overflow  (events were lost; rescan)\n');
            else await writeOut(process.stdout, `${ev.type.padEnd(8)}  ${ev.path}${ev.isDir ? '/' : ''}\n`);
          },
          { recursive: opts.recursive === true, signal: stop.signal },
        );
        process.stderr.write(`watching ${p}${opts.recursive ? ' and below' : ''}; Ctrl-C stops\n`);
        const end = await w.done;
        if (end.reason === 'gone') process.stderr.write(`capsule: ${p} was removed or moved away\n`);
        if (end.reason === 'ended') process.stderr.write('capsule: the sandbox ended\n');
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    });

  files
    .command('ls')
    .alias('list')
    .description('list a directory')
    .argument('<id>', 'sandbox id')
    .argument('[path]', 'directory inside the sandbox', '/')
    .option('--limit <n>', 'at most this many entries')
    .option('--json', 'print a JSON array of entries')
    .action(async (id: string, p: string, opts: { limit?: string; json?: boolean }, cmd: Command) => {
      const sbx = await Sandbox.connect(id, connection(cmd));
      const limit = parseNumber(opts.limit, '--limit');
      const { entries, truncated } = await sbx.files.listDetailed(p, limit !== undefined ? { limit } : {});
      if (opts.json) printJson(entries);
      else
        printTable(
          ['mode', 'size', 'modified', 'name'],
          entries.map((e) => [modeString(e), humanSize(e.size), shortTime(e.mtime), e.symlinkTarget ? `${e.name} -> ${e.symlinkTarget}` : e.name]),
        );
      if (truncated) process.stderr.write(`capsule: listing truncated after ${entries.length} entries (raise --limit)\n`);
    });

  files
    .command('stat')
    .description('show the type, size, mode and mtime of a path')
    .argument('<id>', 'sandbox id')
    .argument('<path>', 'path inside the sandbox')
    .option('--json', 'print JSON')
    .action(async (id: string, p: string, opts: { json?: boolean }, cmd: Command) => {
      const sbx = await Sandbox.connect(id, connection(cmd));
      const e = await sbx.files.stat(p);
      if (opts.json) return printJson(e);
      process.stdout.write(`${modeString(e)}  ${e.size}  ${shortTime(e.mtime)}  ${e.path}${e.symlinkTarget ? ` -> ${e.symlinkTarget}` : ''}\n`);
      for (const [k, v] of Object.entries(e.metadata ?? {})) process.stdout.write(`  ${k}=${v}\n`);
    });

  files
    .command('rm')
    .description('remove a file (or a directory with -r)')
    .argument('<id>', 'sandbox id')
    .argument('<path>', 'path inside the sandbox')
    .option('-r, --recursive', 'remove directories and their contents')
    .action(async (id: string, p: string, opts: { recursive?: boolean }, cmd: Command) => {
      const sbx = await Sandbox.connect(id, connection(cmd));
      await sbx.files.remove(p, { recursive: opts.recursive === true });
    });

  files
    .command('mkdir')
    .description('create a directory and its parents')
    .argument('<id>', 'sandbox id')
    .argument('<path>', 'path inside the sandbox')
    .action(async (id: string, p: string, _opts: unknown, cmd: Command) => {
      const sbx = await Sandbox.connect(id, connection(cmd));
      await sbx.files.makeDir(p);
    });

  files
    .command('mv')
    .description('move or rename a path')
    .argument('<id>', 'sandbox id')
    .argument('<from>', 'existing path')
    .argument('<to>', 'new path')
    .action(async (id: string, from: string, to: string, _opts: unknown, cmd: Command) => {
      const sbx = await Sandbox.connect(id, connection(cmd));
      await sbx.files.rename(from, to);
    });

  program
    .command('cp')
    .description('copy between the host and a sandbox: cp <local> <id>:<path>, or cp <id>:<path> <local> ("-" is stdin/stdout)')
    .argument('<src>', 'source')
    .argument('<dst>', 'destination')
    .action(async (src: string, dst: string, _opts: unknown, cmd: Command) => {
      const from = parseRemote(src);
      const to = parseRemote(dst);
      if ((from && to) || (!from && !to)) throw new UsageError('cp copies between the host and a sandbox: exactly one side must be <sandbox-id>:<path>');
      if (to) {
        // Upload: a remote path ending in / is a directory to copy into.
        const remote = to.path.endsWith('/') ? to.path + (src === '-' ? 'stdin' : path.basename(src)) : to.path;
        const input = src === '-' ? process.stdin : fs.createReadStream(src);
        await new Promise<void>((resolve, reject) => {
          if (src === '-') return resolve();
          (input as fs.ReadStream).once('open', () => resolve()).once('error', reject);
        }).catch((e: NodeJS.ErrnoException) => {
          const msg = `cannot read ${src}: ${e.message}`;
          throw e.code === 'ENOENT' ? new NotFoundError(msg) : new InvalidArgumentError(msg);
        });
        const sbx = await Sandbox.connect(to.id, connection(cmd));
        await sbx.files.write(remote, input);
        return;
      }
      const sbx = await Sandbox.connect(from!.id, connection(cmd));
      const stream = await sbx.files.read(from!.path, { format: 'stream' });
      if (dst === '-') return toStdout(stream);
      let local = dst;
      if (dst.endsWith('/') || (fs.existsSync(dst) && fs.statSync(dst).isDirectory())) local = path.join(dst, path.posix.basename(from!.path));
      // Write next to the target and rename, so a failed copy never leaves half a file under the real name.
      const tmp = `${local}.capsule-${process.pid}.tmp`;
      try {
        await pipeline(Readable.fromWeb(stream as import('node:stream/web').ReadableStream<Uint8Array>), fs.createWriteStream(tmp));
        await fs.promises.rename(tmp, local);
      } catch (e) {
        await fs.promises.rm(tmp, { force: true });
        throw e;
      }
    });
}

/** "sbx-xxxxxxxxxxxx:/path" → {id, path}; anything else is a local path. */
export function parseRemote(spec: string): { id: string; path: string } | undefined {
  const colon = spec.indexOf(':');
  if (colon <= 0) return undefined;
  const id = spec.slice(0, colon);
  if (!schemas.SANDBOX_ID_RE.test(id)) return undefined;
  const p = spec.slice(colon + 1);
  return { id, path: p === '' ? '/' : p };
}
