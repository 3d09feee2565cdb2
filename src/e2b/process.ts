/**
 * envd's `process.Process` service over Connect, on Capsule's command and terminal services. A
 * Start is a background command (or a terminal) followed by its caller: the process outlives the
 * stream, as envd's do, so a client that disconnects can Connect again (and gets the last 64 KiB
 * of output first, Capsule's replay). E2B's SDK runs everything as `/bin/bash -l -c …`; a template
 * without bash (busybox) runs the same arguments with /bin/sh.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Services } from '../api/services.js';
import type { RequestContext } from '../auth/context.js';
import { InvalidArgumentError, isCapsuleError } from '../errors/index.js';
import type { EventSink, ProcessSelector as Selector } from '../sandboxes/commands.js';
import type { ProcessEvent as CapsuleEvent } from '../sandboxes/output.js';
import { ProcessTag } from '../schemas/commands.js';
import { processSvc as P } from '../schemas/e2b/index.js';
import { serverStream, unary, type StreamWriter } from './connect.js';
import { ConnectError } from './errors.js';
import type { EnvdAuth, EnvdCaller } from './envd-auth.js';
import { basicUser, effectiveUser, userPath } from './users.js';

const SERVICE = '/process.Process';
type Params = { id: string };
type Message = { event: P.ProcessEvent };

const keepalive = (): Message => ({ event: { keepalive: {} } });

/** Go's names for the signals a process can die of, as envd's status strings carry them. */
const SIGNAL_TEXT: Record<string, string> = { SIGKILL: 'killed', SIGTERM: 'terminated', SIGINT: 'interrupt', SIGHUP: 'hangup', SIGQUIT: 'quit', SIGPIPE: 'broken pipe', SIGSEGV: 'segmentation fault', SIGABRT: 'aborted' };

/** Whether /bin/bash exists in a sandbox's template (asked once per sandbox). */
class BashProbe {
  private readonly known = new Map<string, boolean>();
  constructor(private readonly s: Services) {}
  async has(ctx: RequestContext, id: string): Promise<boolean> {
    const hit = this.known.get(id);
    if (hit !== undefined) return hit;
    const has = await this.s.files.stat(ctx, id, '/bin/bash').then(
      () => true,
      () => false,
    );
    if (this.known.size >= 4096) this.known.delete(this.known.keys().next().value as string);
    this.known.set(id, has);
    return has;
  }
}

function selector(sel: { pid?: number | undefined; tag?: string | undefined }): Selector {
  if (sel.pid !== undefined) return sel.pid;
  const tag = ProcessTag.safeParse(sel.tag);
  if (!tag.success) throw new ConnectError('not_found', `no process tagged ${JSON.stringify(sel.tag)}`);
  return tag.data;
}

/** Capsule's process events as envd's, onto one stream; the process's end ends it. */
function forward(stream: StreamWriter<Message>, pty: boolean): EventSink & { ended: Promise<void> } {
  let done!: () => void;
  const ended = new Promise<void>((r) => (done = r));
  return {
    ended,
    write(ev: CapsuleEvent): boolean {
      switch (ev.type) {
        case 'start':
          return stream.send({ event: { start: { pid: ev.pid } } });
        case 'stdout':
          return stream.send({ event: { data: pty ? { pty: ev.data.toString('base64') } : { stdout: ev.data.toString('base64') } } });
        case 'stderr':
          return stream.send({ event: { data: { stderr: ev.data.toString('base64') } } });
        case 'exit': {
          const ok = stream.send({ event: { end: endOf(ev) } });
          done();
          return ok;
        }
      }
    },
    drained: () => stream.drained(),
  };
}

function endOf(ev: Extract<CapsuleEvent, { type: 'exit' }>): { exitCode: number; exited: boolean; status: string; error?: string } {
  if (ev.signal) {
    const status = `signal: ${SIGNAL_TEXT[ev.signal] ?? ev.signal}`;
    return { exitCode: -1, exited: false, status, error: ev.timedOut ? `${status} (timed out)` : status };
  }
  const status = `exit status ${ev.exitCode}`;
  return { exitCode: ev.exitCode, exited: true, status, ...(ev.exitCode !== 0 ? { error: status } : {}) };
}

export function processService(app: FastifyInstance, s: Services, auth: EnvdAuth): void {
  const bash = new BashProbe(s);
  const caller = (req: FastifyRequest): EnvdCaller => auth.running(req, (req.params as Params).id);

  /** Follows a process until it ends or the client goes away; the process keeps running either way. */
  const follow = async (c: EnvdCaller, sel: Selector, stream: StreamWriter<Message>, signal: AbortSignal, pty: boolean) => {
    const sink = forward(stream, pty);
    const f = s.commands.follow(c.ctx, c.id, sel, sink);
    const stop = () => f.stop();
    signal.addEventListener('abort', stop, { once: true });
    try {
      await Promise.race([sink.ended, f.done, new Promise<void>((r) => signal.addEventListener('abort', () => r(), { once: true }))]);
    } finally {
      signal.removeEventListener('abort', stop);
      f.stop();
    }
  };

  serverStream(app, `${SERVICE}/Start`, P.StartRequest, keepalive, async (msg, stream, call) => {
    const c = caller(call.req);
    const user = effectiveUser(c.rec, basicUser(call.req));
    const cfg = msg.process;
    let argv = [cfg.cmd, ...(cfg.args ?? [])];
    if (argv[0] === '/bin/bash' && !(await bash.has(c.ctx, c.id))) argv = ['/bin/sh', ...argv.slice(1)];
    const cwd = cfg.cwd ? userPath(cfg.cwd, user) : undefined;
    let tag: string | undefined;
    if (msg.tag !== undefined) {
      const t = ProcessTag.safeParse(msg.tag);
      if (!t.success) throw new InvalidArgumentError(`tag ${JSON.stringify(msg.tag)}: ${t.error.issues[0]?.message ?? 'invalid'}`);
      tag = t.data;
    }
    if (msg.pty) {
      const { pid } = await s.pty.create(c.ctx, c.id, { cmd: argv, cols: msg.pty.size.cols, rows: msg.pty.size.rows, envs: cfg.envs, cwd, user, tag });
      await follow(c, pid, stream, call.signal, true);
      return;
    }
    const { pid } = await s.commands.run(c.ctx, c.id, { cmd: argv, envs: cfg.envs, cwd, user, tag, background: true });
    // Followed at once (before any await), so no output is missed; then input is closed unless asked for:
    // stdin: false (the SDK's default) is a process whose input is at its end from the start.
    const following = follow(c, pid, stream, call.signal, false);
    if (msg.stdin !== true) await s.commands.sendStdin(c.ctx, c.id, pid, Buffer.alloc(0), true).catch(() => undefined);
    await following;
  });

  serverStream(app, `${SERVICE}/Connect`, P.ConnectRequest, keepalive, async (msg, stream, call) => {
    const c = caller(call.req);
    const sel = selector(msg.process);
    const p = s.commands.resolve(c.ctx, c.id, sel);
    if (!p.running) throw new ConnectError('not_found', `process ${p.pid} is not running`);
    await follow(c, p.pid, stream, call.signal, p.pty);
  });

  unary(app, `${SERVICE}/List`, P.ListRequest, async (_msg, req) => {
    const c = caller(req);
    const processes: P.ProcessInfo[] = s.commands
      .list(c.ctx, c.id)
      .filter((p) => p.running)
      .map((p) => ({
        config: { cmd: p.cmd[0] ?? '', args: p.cmd.slice(1), envs: {}, ...(p.cwd !== undefined ? { cwd: p.cwd } : {}) },
        pid: p.pid,
        ...(p.tag !== undefined ? { tag: p.tag } : {}),
      }));
    return { processes };
  });

  /** A running process by selector: an ended or unknown one is `not_found` (the SDK's kill() answers false). */
  const runningPid = (c: EnvdCaller, sel: { pid?: number | undefined; tag?: string | undefined }) => {
    try {
      const p = s.commands.resolve(c.ctx, c.id, selector(sel));
      if (!p.running) throw new ConnectError('not_found', `process ${p.pid} is not running`);
      return p;
    } catch (err) {
      if (isCapsuleError(err) && err.code === 'not_found') throw new ConnectError('not_found', err.message);
      throw err;
    }
  };

  unary(app, `${SERVICE}/SendInput`, P.SendInputRequest, async (msg, req) => {
    const c = caller(req);
    const p = runningPid(c, msg.process);
    const data = msg.input.pty ?? msg.input.stdin ?? Buffer.alloc(0);
    await s.commands.sendStdin(c.ctx, c.id, p.pid, data, false);
    return {};
  });

  unary(app, `${SERVICE}/SendSignal`, P.SendSignalRequest, async (msg, req) => {
    const c = caller(req);
    const p = runningPid(c, msg.process);
    if (msg.signal === 'SIGNAL_UNSPECIFIED') throw new ConnectError('invalid_argument', 'signal is required: SIGNAL_SIGTERM or SIGNAL_SIGKILL');
    await s.commands.signal(c.ctx, c.id, p.pid, msg.signal === 'SIGNAL_SIGKILL' ? 'SIGKILL' : 'SIGTERM');
    return {};
  });

  unary(app, `${SERVICE}/CloseStdin`, P.CloseStdinRequest, async (msg, req) => {
    const c = caller(req);
    const p = runningPid(c, msg.process);
    if (p.pty) throw new ConnectError('failed_precondition', `process ${p.pid} is a terminal: send Ctrl-D (0x04) to end its input`);
    await s.commands.sendStdin(c.ctx, c.id, p.pid, Buffer.alloc(0), true);
    return {};
  });

  unary(app, `${SERVICE}/Update`, P.UpdateRequest, async (msg, req) => {
    const c = caller(req);
    const p = runningPid(c, msg.process);
    if (msg.pty) await s.pty.resize(c.ctx, c.id, p.pid, { cols: msg.pty.size.cols, rows: msg.pty.size.rows });
    return {};
  });

  app.post(`${SERVICE}/StreamInput`, async (_req, reply) =>
    reply.code(501).header('content-type', 'application/json').send(JSON.stringify({ code: 'unimplemented', message: 'StreamInput is not supported: use SendInput' })),
  );
}
