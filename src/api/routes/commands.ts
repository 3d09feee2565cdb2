import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import { startNdjson, type NdjsonWriter } from '../ndjson.js';
import {
  BackgroundStarted,
  CommandEvent,
  CommandResult,
  ListProcessesResponse,
  ProcessParams,
  RunCommandRequest,
  SandboxParams,
  SendStdinRequest,
  SignalRequest,
  WaitQuery,
  SandboxId,
} from '../../schemas/index.js';
import { isCapsuleError } from '../../errors/index.js';
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
    handler: async ({ params, body, req, reply, principal }) => {
      const owner = principal.owner;
      if (body.background) {
        const r = await s.commands.run(params.id, body, { owner });
        return reply.code(202).send(r);
      }
      const ac = new AbortController();
      if (!body.stream) {
        // Kill the command when the client hangs up before the result.
        reply.raw.once('close', () => {
          if (!reply.raw.writableFinished) ac.abort();
        });
        return s.commands.run(params.id, body, { owner, signal: ac.signal });
      }
      // Streamed: errors before the command starts are ordinary JSON errors;
      // after the first line they travel as an `error` event.
      let out: NdjsonWriter | undefined;
      const sink = {
        write: (ev: CommandEvent) => {
          if (!out) {
            out = startNdjson(reply);
            out.onClose(() => ac.abort());
          }
          return out.write(ev);
        },
        drained: () => out?.drained() ?? Promise.resolve(),
      };
      try {
        await s.commands.run(params.id, body, { owner, sink, signal: ac.signal });
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
    summary: 'List processes started through the API (running and recently finished)',
    tag: 'commands',
    params: SandboxParams,
    responses: { 200: { description: 'Processes', schema: ListProcessesResponse } },
    handler: async ({ params, principal }) => ({ processes: s.commands.list(params.id, principal.owner) }),
  });

  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/commands/:pid/stdin',
    summary: 'Write to the stdin of a background process, optionally closing it',
    tag: 'commands',
    params: ProcParams,
    body: SendStdinRequest,
    responses: { 204: { description: 'Written' } },
    handler: async ({ params, body, principal }) => {
      const data = Buffer.from(body.data ?? '', body.encoding === 'base64' ? 'base64' : 'utf8');
      await s.commands.sendStdin(params.id, params.pid, data, body.eof === true, principal.owner);
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
    handler: async ({ params, body, principal }) => {
      await s.commands.signal(params.id, params.pid, body.signal, principal.owner);
    },
  });

  t.add({
    method: 'DELETE',
    url: '/v1/sandboxes/:id/commands/:pid',
    summary: 'Kill a process (SIGKILL to its process group)',
    tag: 'commands',
    params: ProcParams,
    responses: { 204: { description: 'Killed' } },
    handler: async ({ params, principal }) => {
      await s.commands.signal(params.id, params.pid, 'SIGKILL', principal.owner);
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
    handler: async ({ params, query, principal }) => s.commands.wait(params.id, params.pid, query.timeoutMs, principal.owner),
  });

  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/commands/:pid/stream',
    summary: 'NDJSON stream of a process: kept output first, then live output, then exit',
    tag: 'commands',
    params: ProcParams,
    responses: { 200: { description: 'CommandEvent per line', contentType: 'application/x-ndjson', schema: z.array(CommandEvent) } },
    handler: async ({ params, reply, principal }) => {
      // follow() looks the process up before it writes anything, so a bad pid is a plain 404 (the stream starts lazily).
      let out: NdjsonWriter | undefined;
      const sink = {
        write: (ev: CommandEvent) => (out ??= startNdjson(reply)).write(ev),
        drained: () => out?.drained() ?? Promise.resolve(),
      };
      const f = s.commands.follow(params.id, params.pid, sink, principal.owner);
      out ??= startNdjson(reply);
      out.onClose(() => f.stop());
      await f.done;
      out.end();
      return reply;
    },
  });
}
