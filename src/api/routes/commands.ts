import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import { startNdjson, type NdjsonWriter } from '../ndjson.js';
import {
  BackgroundStarted,
  CommandEvent,
  CommandResult,
  ListProcessesQuery,
  ListProcessesResponse,
  ProcessClientMessage,
  ProcessParams,
  RunCommandRequest,
  SandboxParams,
  SendStdinRequest,
  SignalRequest,
  WaitQuery,
  SandboxId,
  StreamQuery,
} from '../../schemas/index.js';
import { wireEvents } from '../../sandboxes/output.js';
import { InvalidArgumentError, isCapsuleError } from '../../errors/index.js';
import { z } from 'zod';

const ProcParams = ProcessParams.extend({ id: SandboxId });

export function commandRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/commands',
    summary: 'Run a command: buffered result, NDJSON stream (stream: true) or background (background: true)',
    tag: 'commands',
    params: SandboxParams,
    body: RunCommandRequest,
    responses: {
      200: { description: 'Result of a foreground command (or an NDJSON stream of CommandEvent when stream is true)', schema: CommandResult },
      202: { description: 'A background command started', schema: BackgroundStarted },
    },
    handler: async ({ params, body, req, reply, ctx }) => {
      if (body.background) {
        const r = await s.commands.run(ctx, params.id, body);
        return reply.code(202).send(r);
      }
      const ac = new AbortController();
      if (!body.stream) {
        // Kill the command when the client hangs up before the result.
        reply.raw.once('close', () => {
          if (!reply.raw.writableFinished) ac.abort();
        });
        return s.commands.run(ctx, params.id, body, { signal: ac.signal });
      }
      // Streamed: errors before the command starts are ordinary JSON errors;
      // after the first line they travel as an `error` event.
      let out: NdjsonWriter | undefined;
      const write = wireEvents(body.encoding ?? 'utf8', (ev: CommandEvent) => {
        if (!out) {
          out = startNdjson(reply);
          out.onClose(() => ac.abort());
        }
        return out.write(ev);
      });
      const sink = { write, drained: () => out?.drained() ?? Promise.resolve() };
      try {
        await s.commands.run(ctx, params.id, body, { sink, signal: ac.signal });
      } catch (err) {
        if (!out) throw err;
        out.write({ type: 'error', error: isCapsuleError(err) ? { code: err.code, message: err.message } : { code: 'internal', message: 'internal error' } });
        req.log.error({ err }, 'streamed command failed');
      }
      out?.end();
      return reply;
    },
  });

  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/commands',
    summary: 'List processes started through the API (running and recently finished), optionally those with a tag',
    tag: 'commands',
    params: SandboxParams,
    query: ListProcessesQuery,
    responses: { 200: { description: 'Processes', schema: ListProcessesResponse } },
    handler: async ({ params, query, ctx }) => ({ processes: s.commands.list(ctx, params.id, query) }),
  });

  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/commands/:pid/stdin',
    summary: 'Write to the stdin of a background process, optionally closing it',
    tag: 'commands',
    params: ProcParams,
    body: SendStdinRequest,
    responses: { 204: { description: 'Written' } },
    handler: async ({ params, body, ctx }) => {
      const data = Buffer.from(body.data ?? '', body.encoding === 'base64' ? 'base64' : 'utf8');
      await s.commands.sendStdin(ctx, params.id, params.pid, data, body.eof === true);
    },
  });

  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/commands/:pid/signal',
    summary: "Send a signal to a process's process group",
    tag: 'commands',
    params: ProcParams,
    body: SignalRequest,
    responses: { 204: { description: 'Sent' } },
    handler: async ({ params, body, ctx }) => {
      await s.commands.signal(ctx, params.id, params.pid, body.signal);
    },
  });

  t.add({
    method: 'DELETE',
    url: '/v1/sandboxes/:id/commands/:pid',
    summary: 'Kill a process (SIGKILL to its process group)',
    tag: 'commands',
    params: ProcParams,
    responses: { 204: { description: 'Killed' } },
    handler: async ({ params, ctx }) => {
      await s.commands.signal(ctx, params.id, params.pid, 'SIGKILL');
    },
  });

  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/commands/:pid/wait',
    summary: 'Wait for a process to exit and get its result',
    tag: 'commands',
    params: ProcParams,
    query: WaitQuery,
    responses: { 200: { description: 'The result', schema: CommandResult } },
    handler: async ({ params, query, ctx }) => s.commands.wait(ctx, params.id, params.pid, query),
  });

  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/commands/:pid/stream',
    summary: 'NDJSON stream of a process (pid or tag): its recent output first (at most 64 KiB per stream), then live output, then exit',
    tag: 'commands',
    params: ProcParams,
    query: StreamQuery,
    responses: { 200: { description: 'CommandEvent per line', contentType: 'application/x-ndjson', schema: z.array(CommandEvent) } },
    handler: async ({ params, query, reply, ctx }) => {
      // follow() looks the process up before it writes anything, so a bad pid is a plain 404 (the stream starts lazily).
      let out: NdjsonWriter | undefined;
      const sink = {
        write: wireEvents(query.encoding ?? 'utf8', (ev: CommandEvent) => (out ??= startNdjson(reply)).write(ev)),
        drained: () => out?.drained() ?? Promise.resolve(),
      };
      const f = s.commands.follow(ctx, params.id, params.pid, sink);
      out ??= startNdjson(reply);
      out.onClose(() => f.stop());
      await f.done;
      out.end();
      return reply;
    },
  });
}

/** GET .../commands/:pid/connect: one WebSocket for a process's output (CommandEvent text frames) and its stdin (binary frames). */
export function commandSocketRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/commands/:pid/connect',
    summary:
      'WebSocket to a process (pid or tag): text frames of CommandEvent (start, its recent output, live output, exit); ' +
      'the client sends stdin as binary frames, and `{"type":"eof"}` or `{"type":"signal","signal"}` as text. Closing it leaves the process running.',
    tag: 'commands',
    params: ProcParams,
    query: StreamQuery,
    responses: { 101: { description: 'Switching to the WebSocket protocol; text frames are CommandEvent', schema: CommandEvent } },
    handler: async () => undefined,
    socket: async ({ params, query, ctx }) => {
      const { pid } = s.commands.resolve(ctx, params.id, params.pid);
      return {
        cancel: () => undefined,
        socket: (ch) => {
          let f: ReturnType<Services['commands']['follow']>;
          const write = wireEvents(query.encoding ?? 'utf8', (ev: CommandEvent) => {
            const ok = ch.sendJson(ev);
            if (ev.type === 'exit') ch.close(1000, 'exited');
            return ok;
          });
          try {
            f = s.commands.follow(ctx, params.id, pid, { write, drained: () => ch.drained() });
          } catch (err) {
            ch.fail(err);
            return;
          }
          ch.onClose(() => f.stop());
          ch.onMessage((msg) => {
            if ('bytes' in msg) {
              s.commands.sendStdin(ctx, params.id, pid, msg.bytes, false).catch((err: unknown) => ch.fail(err));
              return;
            }
            const m = ProcessClientMessage.safeParse(msg.text);
            if (!m.success) return ch.fail(new InvalidArgumentError('a text frame must be {"type":"eof"} or {"type":"signal","signal":"SIGTERM"}'));
            const done = m.data.type === 'eof' ? s.commands.sendStdin(ctx, params.id, pid, Buffer.alloc(0), true) : s.commands.signal(ctx, params.id, pid, m.data.signal);
            done.catch((err: unknown) => ch.fail(err));
          });
        },
      };
    },
  });
}
