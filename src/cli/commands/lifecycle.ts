/** `capsule pause|resume|stop|start <id>`: the sandbox service's lifecycle verbs, through the SDK. */
import type { Command } from 'commander';
import { Sandbox, type SandboxInfo } from '../../sdk/index.js';
import { connection, printJson, relativeTime, secondsToMs, shortTime } from '../util.js';

function report(info: SandboxInfo, json: boolean | undefined): void {
  if (json) return printJson(info);
  const left = info.timeoutRemainingMs !== undefined ? `, ${Math.round(info.timeoutRemainingMs / 1000)} s of its timeout left` : '';
  const when =
    info.state === 'running'
      ? ` (expires ${shortTime(info.expiresAt)}, ${relativeTime(info.expiresAt)})`
      : info.state === 'paused' || info.state === 'stopped' || info.state === 'hibernated'
        ? ` (deleted ${shortTime(info.expiresAt)} unless woken${left})`
        : '';
  process.stdout.write(`${info.id} ${info.state}${when}\n`);
}

export function registerLifecycleCommands(program: Command): void {
  const verbs: Array<{ name: 'pause' | 'resume' | 'stop' | 'start'; description: string; wakes: boolean }> = [
    { name: 'pause', description: 'freeze every process of a sandbox (memory kept; --memory disk: hibernate, memory to disk and freed); its timeout clock stops', wakes: false },
    { name: 'resume', description: 'thaw a paused sandbox (restore a hibernated one): its processes continue where they were', wakes: true },
    { name: 'stop', description: 'end every process and free the memory of a sandbox, keeping its files', wakes: false },
    { name: 'start', description: 'boot a stopped sandbox again with the same id and files', wakes: true },
  ];
  for (const v of verbs) {
    const c = program.command(v.name).description(v.description).argument('<id>', 'sandbox id').option('--json', 'print the sandbox as JSON');
    if (v.wakes) c.option('--timeout <seconds>', 'lifetime from now (default: what it had left)');
    if (v.name === 'pause') c.option('--memory <where>', "keep (default: memory stays resident) or disk (hibernate: needs runc and CRIU 4, see `capsule doctor`)");
    c.action(async (id: string, opts: { json?: boolean; timeout?: string; memory?: string }, cmd: Command) => {
      if (opts.memory !== undefined && opts.memory !== 'keep' && opts.memory !== 'disk') throw new Error(`--memory must be keep or disk, got ${opts.memory}`);
      const sbx = await Sandbox.connect(id, connection(cmd));
      const timeoutMs = secondsToMs(opts.timeout, '--timeout');
      const wake = timeoutMs !== undefined ? { timeoutMs } : {};
      const info = v.name === 'pause' ? await sbx.pause(opts.memory !== undefined ? { memory: opts.memory as 'keep' | 'disk' } : {}) : v.name === 'resume' ? await sbx.resume(wake) : v.name === 'stop' ? await sbx.stop() : await sbx.start(wake);
      report(info, opts.json);
    });
  }
  program
    .command('fork')
    .description("fork a running sandbox through a snapshot of its files; --memory: each fork continues its processes from the same instant (needs runc and CRIU 4)")
    .argument('<id>', 'sandbox id')
    .option('--count <n>', 'how many forks (1-16)', '1')
    .option('--memory', "carry the processes and their memory over (capabilities.memorySnapshot)")
    .option('--json', 'print the forks as JSON')
    .action(async (id: string, opts: { count: string; memory?: boolean; json?: boolean }, cmd: Command) => {
      const count = Number(opts.count);
      if (!Number.isInteger(count) || count < 1 || count > 16) throw new Error(`--count must be an integer from 1 to 16, got ${opts.count}`);
      const sbx = await Sandbox.connect(id, connection(cmd));
      const forks = await sbx.fork({ count, memory: opts.memory === true });
      if (opts.json) return printJson(await Promise.all(forks.map((f) => f.getInfo())));
      for (const f of forks) process.stdout.write(`${f.id}\n`);
    });
}
