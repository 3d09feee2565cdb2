/**
 * Terminals: POST starts one, a WebSocket at /pty/:pid attaches to it (binary
 * frames are raw bytes both ways; text frames are JSON control messages), and
 * resize works without a connection too. Everything goes through the command
 * and terminal services; this file only speaks the wire.
 */
import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import type { SocketChannel } from '../socket.js';
import { CreatePtyRequest, ProcessParams, PtyClientMessage, PtyServerMessage, PtyStarted, ResizePtyRequest, SandboxId, SandboxParams } from '../../schemas/index.js';
import type { RequestContext } from '../../auth/context.js';
import { InvalidArgumentError } from '../../errors/index.js';
import type { ProcessEvent } from '../../sandboxes/output.js';

const ProcParams = ProcessParams.extend({ id: SandboxId });

export function ptyRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/pty',
    summary: 'Start a terminal (a login shell with TERM=xterm-256color unless cmd says otherwise); connect to it with the WebSocket at /pty/:pid',
    tag: 'pty',
    params: SandboxParams,
    body: CreatePtyRequest,
    responses: { 201: { description: 'The terminal runs', schema: PtyStarted } },
    errors: ['rate_limited'],
    handler: async ({ params, body, ctx }) => s.pty.create(ctx, params.id, body),
  });

  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/pty/:pid/resize',
    summary: "Set a terminal's size (its program gets SIGWINCH)",
    tag: 'pty',
    params: ProcParams,
    body: ResizePtyRequest,
    responses: { 204: { description: 'Resized' } },
    handler: async ({ params, body, ctx }) => {
      await s.pty.resize(ctx, params.id, params.pid, body);
    },
  });

  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/pty/:pid',
    summary:
      'WebSocket to a terminal (pid or tag). Server: a `ready` text frame, then binary frames of output (first the recent output, at most 64 KiB), then an `exit` text frame. ' +
      'Client: binary frames are keystrokes; text frames `{"type":"resize","cols","rows"}` or `{"type":"signal","signal"}`. Closing it leaves the terminal running.',
    tag: 'pty',
    params: ProcParams,
    responses: { 101: { description: 'Switching to the WebSocket protocol; text frames are PtyServerMessage', schema: PtyServerMessage } },
    handler: async () => undefined,
    socket: async ({ params, ctx }) => {
      const p = s.commands.resolve(ctx, params.id, params.pid);
      if (!p.pty) throw new InvalidArgumentError(`process ${p.pid} is not a terminal: connect to it with GET /v1/sandboxes/${params.id}/commands/${p.pid}/connect`, { pid: p.pid });
      return { cancel: () => undefined, socket: (ch) => attachTerminal(s, ctx, params.id, p.pid, ch) };
    },
  });
}

function attachTerminal(s: Services, ctx: RequestContext, sandboxId: string, pid: number, ch: SocketChannel): void {
  // Events that come while follow() replays are held until `ready` (which says how many bytes the replay is) went out.
  let held: ProcessEvent[] | null = [];
  const deliver = (ev: ProcessEvent): boolean => {
    switch (ev.type) {
      case 'stdout':
      case 'stderr':
        return ch.sendBytes(ev.data);
      case 'exit':
        ch.sendJson({ type: 'exit', exitCode: ev.exitCode, ...(ev.signal ? { signal: ev.signal } : {}) });
        ch.close(1000, 'exited');
        return true;
      default:
        return true;
    }
  };
  let f: ReturnType<Services['commands']['follow']>;
  try {
    f = s.commands.follow(ctx, sandboxId, pid, {
      write: (ev) => (held ? (held.push(ev), true) : deliver(ev)),
      drained: () => ch.drained(),
    });
  } catch (err) {
    ch.fail(err);
    return;
  }
  ch.sendJson({ type: 'ready', pid, replayBytes: f.replayBytes });
  const early = held;
  held = null;
  for (const ev of early) deliver(ev);
  ch.onClose(() => f.stop());
  ch.onMessage((msg) => {
    if ('bytes' in msg) {
      s.commands.sendStdin(ctx, sandboxId, pid, msg.bytes, false).catch((err: unknown) => ch.fail(err));
      return;
    }
    const m = PtyClientMessage.safeParse(msg.text);
    if (!m.success) {
      ch.fail(new InvalidArgumentError('a text frame must be {"type":"resize","cols":N,"rows":N} or {"type":"signal","signal":"SIGINT"}'));
      return;
    }
    const done = m.data.type === 'resize' ? s.pty.resize(ctx, sandboxId, pid, m.data) : s.commands.signal(ctx, sandboxId, pid, m.data.signal);
    done.catch((err: unknown) => ch.fail(err));
  });
}
