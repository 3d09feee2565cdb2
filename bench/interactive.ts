/**
 * Scenario — interactive paths: a PTY keystroke's echo round trip, and the
 * latency of a file watch event, through the SDK (HTTP + WebSocket or NDJSON,
 * the daemon, the agent), against the same through a connection straight to
 * the sandbox's agent socket (no daemon, no HTTP), interleaved in one run.
 *
 * Echo: a terminal running `cat` in canonical mode; one byte is typed and the
 * terminal's echo of it (the kernel's line discipline, as for any keystroke in
 * a shell) is waited for. Watch: a shell in the sandbox creates a file for
 * each line written to its stdin (straight to the agent, for both rows); the
 * clock runs from that write to the create event.
 */
import { connectAgent } from '../src/agent/client.js';
import type { AgentProcess, WatchEvent } from '../src/agent/types.js';
import { Sandbox, type FilesystemEvent } from '../src/sdk/index.js';
import { interleave, linkRatios, row, type Scenario } from './context.js';
import { now } from './stats.js';
import { agentSocketOf } from './daemon.js';

/** Resolves the next time `pred` holds for something pushed to `waiters`. */
class Waiter<T> {
  private pending: Array<{ pred: (v: T) => boolean; resolve: () => void }> = [];
  push(v: T): void {
    this.pending = this.pending.filter((p) => {
      if (!p.pred(v)) return true;
      p.resolve();
      return false;
    });
  }
  next(pred: (v: T) => boolean, ms = 5000): Promise<void> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('timed out')), ms);
      this.pending.push({ pred, resolve: () => (clearTimeout(t), resolve()) });
    });
  }
}

export const interactive: Scenario = async (ctx) => {
  const errors: string[] = [];
  const n = ctx.quick ? 30 : 300;
  const sbx = await Sandbox.create({ ...ctx.conn, template: 'busybox' });
  const agent = await connectAgent(agentSocketOf(ctx.daemon, sbx.id));
  try {
    // Echo: through the SDK (WebSocket) and straight to the agent.
    const sdkOut = new Waiter<string>();
    const term = await sbx.pty.create({ cmd: ['cat'], onData: (d) => sdkOut.push(Buffer.from(d).toString('latin1')) });
    const agentOut = new Waiter<string>();
    const direct: AgentProcess = await agent.exec({ argv: ['cat'], env: { PATH: '/bin:/usr/bin' }, stdin: false, streams: [{ id: 1, kind: 'pty', fds: [0, 1, 2] }] });
    direct.on('data', (_s, c) => agentOut.push(c.toString('latin1')));

    // Watch: a trigger process (fed through the agent in both rows) and two watches of one directory.
    await sbx.commands.run('mkdir -p /tmp/w');
    const trigger = await agent.exec({ argv: ['/bin/sh', '-c', 'cd /tmp/w && while read -r f; do : > "$f"; done'], env: { PATH: '/bin:/usr/bin' }, stdin: true });
    const sdkEvents = new Waiter<string>();
    const sdkWatch = await sbx.files.watchDir('/tmp/w', (e: FilesystemEvent) => void (e.type === 'create' && sdkEvents.push(e.path)));
    const agentEvents = new Waiter<string>();
    const agentWatch = await agent.watch('/tmp/w');
    agentWatch.on('event', (e: WatchEvent) => void (e.type === 'create' && agentEvents.push(e.path)));

    const key = (i: number) => String.fromCharCode(97 + (i % 26));
    const echo = async (send: (b: Buffer) => Promise<void>, out: Waiter<string>, i: number) => {
      const k = key(i);
      const seen = out.next((s) => s.includes(k));
      const t0 = now();
      await send(Buffer.from(k));
      await seen;
      return now() - t0;
    };
    const watchOnce = async (events: Waiter<string>, name: string) => {
      const seen = events.next((p) => p === name);
      const t0 = now();
      await trigger.writeStdin(Buffer.from(`${name}\n`));
      await seen;
      return now() - t0;
    };
    for (let i = 0; i < 5; i++) {
      await echo((b) => term.sendInput(b), sdkOut, i);
      await echo((b) => direct.writeStream(1, b), agentOut, i);
      await watchOnce(sdkEvents, `warm-s${i}`);
      await watchOnce(agentEvents, `warm-a${i}`);
    }
    const got = await interleave(
      n,
      [
        { name: 'pty echo (sdk)', run: (i) => echo((b) => term.sendInput(b), sdkOut, i) },
        { name: 'pty echo (agent socket)', run: (i) => echo((b) => direct.writeStream(1, b), agentOut, i) },
        { name: 'watch event (sdk)', run: (i) => watchOnce(sdkEvents, `s${i}`) },
        { name: 'watch event (agent socket)', run: (i) => watchOnce(agentEvents, `a${i}`) },
      ],
      errors,
    );
    sdkWatch.stop();
    agentWatch.close();
    await term.kill().catch(() => undefined);
    await direct.signal('SIGKILL').catch(() => undefined);
    await trigger.signal('SIGKILL').catch(() => undefined);
    const rows = [
      row('pty echo (sdk)', 'capsule', 'ms', got.get('pty echo (sdk)')!, { vs: 'pty echo (agent socket)' }),
      row('pty echo (agent socket)', 'baseline', 'ms', got.get('pty echo (agent socket)')!),
      row('watch event (sdk)', 'capsule', 'ms', got.get('watch event (sdk)')!, { vs: 'watch event (agent socket)' }),
      row('watch event (agent socket)', 'baseline', 'ms', got.get('watch event (agent socket)')!),
    ];
    linkRatios(rows);
    return {
      name: 'interactive',
      title: 'PTY keystroke echo round trip and file watch event latency',
      rows,
      notes: [
        'pty echo: one byte typed into a terminal running cat (canonical mode), until its echo is back. sdk: WebSocket to the daemon, which forwards to the agent; agent socket: the same terminal kind straight on the agent connection.',
        'watch event: from writing a file name to a shell in the sandbox (through the agent, both rows) until the create event arrives. sdk: NDJSON stream from the daemon; agent socket: a WATCH channel straight on the agent.',
        'All four series are interleaved in one loop.',
      ],
      errors,
    };
  } finally {
    agent.close();
    await sbx.kill().catch(() => undefined);
  }
};
