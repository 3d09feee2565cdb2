/**
 * `capsule shell <id>`: the local terminal attached to a terminal in the
 * sandbox. Raw mode, the local size (and SIGWINCH resizes), the remote exit
 * code as ours, and a detach key sequence (Ctrl-P Ctrl-Q, as docker's) that
 * leaves the shell running for `capsule shell <id> --attach <pid|tag>`.
 */
import type { Command } from 'commander';
import { Sandbox, type PtyHandle } from '../../sdk/index.js';
import { collect, connection, parsePairs, UsageError } from '../util.js';

/** Ctrl-P Ctrl-Q. A Ctrl-P not followed by Ctrl-Q is sent on with the next key. */
const DETACH = [0x10, 0x11];

interface ShellOptions {
  attach?: string;
  cwd?: string;
  env?: string[];
  user?: string;
  tag?: string;
  detachKeys?: string;
}

/** "ctrl-p,ctrl-q" → [0x10, 0x11]. */
export function parseDetachKeys(spec: string): number[] {
  const keys = spec.split(',').map((k) => k.trim().toLowerCase());
  const out: number[] = [];
  for (const k of keys) {
    const m = /^ctrl-([a-z@[\\\]^_])$/.exec(k);
    if (m) out.push(m[1]!.toUpperCase().charCodeAt(0) & 0x1f);
    else if (k.length === 1) out.push(k.charCodeAt(0));
    else throw new UsageError(`--detach-keys: "${k}" is not a key; use e.g. ctrl-p,ctrl-q or ctrl-],d`);
  }
  if (out.length === 0) throw new UsageError('--detach-keys needs at least one key');
  return out;
}

/** Splits typed bytes into what goes to the terminal and whether the detach sequence was completed. */
export class DetachMatcher {
  private matched = 0;
  constructor(private readonly seq: number[]) {}

  feed(chunk: Uint8Array): { send: Uint8Array; detach: boolean } {
    const out: number[] = [];
    for (const b of chunk) {
      if (b === this.seq[this.matched]) {
        this.matched++;
        if (this.matched === this.seq.length) return { send: Uint8Array.from(out), detach: true };
        continue;
      }
      // A partial sequence that did not complete is typed after all.
      for (let i = 0; i < this.matched; i++) out.push(this.seq[i]!);
      this.matched = b === this.seq[0] ? 1 : 0;
      if (this.matched === 0) out.push(b);
    }
    return { send: Uint8Array.from(out), detach: false };
  }
}

export function registerShellCommand(program: Command): void {
  program
    .command('shell')
    .description('open an interactive terminal in a sandbox (a login shell); detach with Ctrl-P Ctrl-Q, leaving it running')
    .argument('<id>', 'sandbox id')
    .argument('[cmd...]', 'program to run instead of a login shell (after --)')
    .option('-a, --attach <pid|tag>', 'attach to a terminal that is already running (its recent output is shown first)')
    .option('--cwd <dir>', 'working directory inside the sandbox')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect)
    .option('-u, --user <user>', 'user name or uid inside the sandbox')
    .option('-t, --tag <tag>', 'name the terminal, to attach to it later by that name')
    .option('--detach-keys <keys>', 'key sequence that detaches, e.g. ctrl-],d (default ctrl-p,ctrl-q)')
    .action(async (id: string, cmd: string[], opts: ShellOptions, command: Command) => {
      const detachSeq = opts.detachKeys ? parseDetachKeys(opts.detachKeys) : DETACH;
      const sbx = await Sandbox.connect(id, connection(command));
      const out = process.stdout;
      const onData = (d: Uint8Array) => void out.write(d);
      const size = () => ({ cols: out.columns || 80, rows: out.rows || 24 });
      let term: PtyHandle;
      if (opts.attach !== undefined) {
        term = await sbx.pty.connect(/^\d+$/.test(opts.attach) ? Number(opts.attach) : opts.attach, { onData });
        if (out.isTTY) await term.resize(size());
      } else {
        term = await sbx.pty.create({
          ...size(),
          ...(cmd.length ? { cmd } : {}),
          ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
          ...(opts.user !== undefined ? { user: opts.user } : {}),
          ...(opts.tag !== undefined ? { tag: opts.tag } : {}),
          ...(opts.env ? { envs: parsePairs(opts.env, '--env') ?? {} } : {}),
          onData,
        });
      }
      const stdin = process.stdin;
      const raw = stdin.isTTY === true;
      if (raw) stdin.setRawMode(true);
      const matcher = new DetachMatcher(detachSeq);
      let detached = false;
      const onWinch = () => void term.resize(size()).catch(() => undefined);
      process.on('SIGWINCH', onWinch);
      const done = new Promise<void>((resolve) => {
        stdin.on('data', (chunk: Buffer) => {
          const { send, detach } = matcher.feed(chunk);
          if (send.length) void term.sendInput(send).catch(() => undefined);
          if (detach) {
            detached = true;
            term.disconnect();
            resolve();
          }
        });
        stdin.on('end', () => resolve());
      });
      try {
        const exited = term.wait();
        await Promise.race([done, exited.catch(() => undefined)]);
        if (detached) {
          process.stderr.write(`\r\ncapsule: detached; the terminal keeps running: capsule shell ${id} --attach ${opts.tag ?? term.pid}\r\n`);
          process.exitCode = 0;
          return;
        }
        const r = await exited;
        process.exitCode = r.exitCode;
      } finally {
        process.off('SIGWINCH', onWinch);
        if (raw) stdin.setRawMode(false);
        stdin.pause();
        stdin.destroy();
      }
    });
}
