import { z } from 'zod';
import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import { startNdjson, type NdjsonWriter } from '../ndjson.js';
import { isCapsuleError } from '../../errors/index.js';
import {
  CodeContext,
  CodeContextParams,
  CodeEvent,
  CreateCodeContextRequest,
  ListCodeContextsResponse,
  RunCodeRequest,
  RunCodeResult,
  SandboxParams,
} from '../../schemas/index.js';
import type { CodeSink } from '../../interpreter/context.js';

export function codeRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/code',
    summary: 'Run code in a stateful context: one JSON result, or an NDJSON stream of events (stream: true)',
    tag: 'code',
    params: SandboxParams,
    body: RunCodeRequest,
    responses: {
      200: { description: 'The cell\'s output, rich results and error (or an NDJSON stream of CodeEvent when stream is true)', schema: RunCodeResult },
    },
    errors: ['unsupported', 'rate_limited'],
    handler: async ({ params, body, req, reply, ctx }) => {
      const ac = new AbortController();
      if (!body.stream) {
        // A client that hangs up interrupts its cell.
        reply.raw.once('close', () => {
          if (!reply.raw.writableFinished) ac.abort();
        });
        return s.code.run(ctx, params.id, body, { signal: ac.signal });
      }
      // Errors before the cell starts are ordinary JSON errors; after the first line they are an `error` event.
      let out: NdjsonWriter | undefined;
      const sink: CodeSink = {
        write: (ev) => {
          if (!out) {
            out = startNdjson(reply);
            out.onClose(() => ac.abort());
          }
          return out.write(ev);
        },
        drained: () => out?.drained() ?? Promise.resolve(),
      };
      try {
        await s.code.run(ctx, params.id, body, { sink, signal: ac.signal });
      } catch (err) {
        if (!out) throw err;
        out.write({ type: 'error', error: isCapsuleError(err) ? { code: err.code, message: err.message } : { code: 'internal', message: 'internal error' } });
        req.log.error({ err }, 'streamed code run failed');
      }
      out?.end();
      return reply;
    },
  });

  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/code/contexts',
    summary: 'Create a code context: a long-lived interpreter whose variables, imports and functions persist between runs',
    tag: 'code',
    params: SandboxParams,
    body: CreateCodeContextRequest,
    responses: { 201: { description: 'The context, ready', schema: CodeContext } },
    errors: ['unsupported', 'rate_limited'],
    handler: async ({ params, body, ctx }) => s.code.createContext(ctx, params.id, body),
  });

  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/code/contexts',
    summary: "A sandbox's code contexts",
    tag: 'code',
    params: SandboxParams,
    responses: { 200: { description: 'Contexts', schema: ListCodeContextsResponse } },
    handler: async ({ params, ctx }) => ({ contexts: s.code.listContexts(ctx, params.id) }),
  });

  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/code/contexts/:contextId',
    summary: 'One code context',
    tag: 'code',
    params: CodeContextParams,
    responses: { 200: { description: 'The context', schema: CodeContext } },
    handler: async ({ params, ctx }) => s.code.getContext(ctx, params.id, params.contextId),
  });

  t.add({
    method: 'POST',
    url: '/v1/sandboxes/:id/code/contexts/:contextId/restart',
    summary: 'Restart a context: a fresh interpreter, same id (all state is gone)',
    tag: 'code',
    params: CodeContextParams,
    responses: { 200: { description: 'The context, ready', schema: CodeContext } },
    handler: async ({ params, ctx }) => s.code.restartContext(ctx, params.id, params.contextId),
  });

  t.add({
    method: 'DELETE',
    url: '/v1/sandboxes/:id/code/contexts/:contextId',
    summary: 'Remove a context; its interpreter and what it started are killed',
    tag: 'code',
    params: CodeContextParams,
    responses: { 204: { description: 'Removed' } },
    handler: async ({ params, ctx }) => {
      await s.code.removeContext(ctx, params.id, params.contextId);
    },
  });
}

/** The stream's line type, for the OpenAPI document's readers. */
export const CodeStream = z.array(CodeEvent);
