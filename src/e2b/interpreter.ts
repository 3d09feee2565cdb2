/**
 * The code interpreter server `@e2b/code-interpreter` talks to (its port 49999): /execute streams
 * a cell's output as one JSON object per line, /contexts creates, lists, restarts and removes
 * contexts. All of it is Capsule's interpreter service (src/interpreter); this file renames.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Services } from '../api/services.js';
import type { CodeSink } from '../interpreter/context.js';
import type { CodeContext, CodeEvent, CodeResult } from '../schemas/code.js';
import { interpreter as I } from '../schemas/e2b/index.js';
import { NotFoundError, isCapsuleError } from '../errors/index.js';
import { startNdjson, type NdjsonWriter } from '../api/ndjson.js';
import type { EnvdAuth } from './envd-auth.js';
import { parse } from './parse.js';

type Params = { id: string };

/** E2B's result keys for the mime types Capsule's results carry under their short names. */
const RESULT_KEYS = ['text', 'html', 'markdown', 'svg', 'png', 'jpeg', 'latex', 'json', 'javascript'] as const;

/** A Capsule result as E2B's `result` line. E2B's server drops single quotes around the text (a str's repr); so does this. */
export function resultLine(r: CodeResult): I.OutputLine {
  const line: Record<string, unknown> = { type: 'result', is_main_result: r.isMainResult };
  for (const k of RESULT_KEYS) if (r[k] !== undefined) line[k] = r[k];
  const text = line.text;
  if (typeof text === 'string' && text.length >= 2 && text.startsWith("'") && text.endsWith("'")) {
    line.text = text.slice(1, -1);
  }
  return line as I.OutputLine;
}

/** Capsule's code events as E2B's output lines (none for the start). */
export function outputLines(ev: CodeEvent): I.OutputLine[] {
  const now = new Date().toISOString();
  switch (ev.type) {
    case 'start':
      return [];
    case 'stdout':
    case 'stderr':
      return [{ type: ev.type, text: ev.data, timestamp: now }];
    case 'result':
      return [resultLine(ev.result)];
    case 'executionError':
      return [{ type: 'error', name: ev.error.name, value: ev.error.value, traceback: ev.error.traceback.join('\n') }];
    case 'end':
      return [...(ev.executionCount !== undefined ? [{ type: 'number_of_executions' as const, execution_count: ev.executionCount }] : []), { type: 'end_of_execution' }];
    case 'error':
      return [{ type: 'error', name: ev.error.code, value: ev.error.message, traceback: '' }];
  }
}

function contextOut(c: CodeContext): { id: string; language: string; cwd: string } {
  return { id: c.id, language: c.language, cwd: c.cwd ?? '' };
}

/** A context id that can name one of Capsule's; any other is a context that does not exist (404, as E2B answers). */
function known(id: string): string {
  const ok = I.knownContextId(id);
  if (!ok) throw new NotFoundError(`context ${id} not found`, { context: id });
  return ok;
}

export function interpreterRoutes(app: FastifyInstance, s: Services, auth: EnvdAuth): void {
  const caller = (req: FastifyRequest) => auth.running(req, (req.params as Params).id, { traffic: true });

  app.get('/health', async (req, reply) => {
    caller(req);
    return reply.code(200).type('text/plain').send('OK');
  });

  app.post('/execute', async (req, reply: FastifyReply) => {
    const c = caller(req);
    const body = parse(I.ExecuteRequest, req.body, 'body');
    if (body.context_id) known(body.context_id);
    const ac = new AbortController();
    let out: NdjsonWriter | undefined;
    const open = () => {
      if (!out) {
        out = startNdjson(reply);
        // A client that goes away (its own timeout included) interrupts the cell.
        out.onClose(() => ac.abort());
      }
      return out;
    };
    const sink: CodeSink = {
      write: (ev) => {
        // The cell has started (its context is known): headers out now, as the SDK's own timeout
        // (timeoutMs) only starts counting when they arrive.
        if (ev.type === 'start') {
          open();
          reply.raw.flushHeaders();
        }
        let ok = true;
        for (const line of outputLines(ev)) ok = open().write(line) && ok;
        return ok;
      },
      drained: () => out?.drained() ?? Promise.resolve(),
    };
    // The cell runs until it ends or its caller leaves: the SDK keeps its own timeout (timeoutMs).
    const run = {
      code: body.code,
      ...(body.context_id ? { context: body.context_id } : {}),
      ...(body.language ? { language: body.language } : {}),
      ...(body.env_vars ? { envs: body.env_vars } : {}),
      timeoutMs: 0,
    };
    try {
      await s.code.run(c.ctx, c.id, run, { sink, signal: ac.signal });
    } catch (err) {
      if (!out) throw err;
      out.write({ type: 'error', name: isCapsuleError(err) ? err.code : 'InternalError', value: isCapsuleError(err) ? err.message : 'internal error', traceback: '' });
      if (!isCapsuleError(err)) req.log.error({ err }, 'code run failed');
    }
    open().end();
    return reply;
  });

  app.post('/contexts', async (req) => {
    const c = caller(req);
    const body = parse(I.CreateContextRequest, req.body, 'body');
    return contextOut(
      await s.code.createContext(c.ctx, c.id, { ...(body.language ? { language: body.language } : {}), ...(body.cwd ? { cwd: body.cwd } : {}) }),
    );
  });

  app.get('/contexts', async (req) => {
    const c = caller(req);
    return s.code.listContexts(c.ctx, c.id).map(contextOut);
  });

  app.post('/contexts/:contextId/restart', async (req, reply) => {
    const c = caller(req);
    const { contextId } = parse(I.ContextParams, req.params, 'path parameter');
    await s.code.restartContext(c.ctx, c.id, known(contextId));
    return reply.code(204).send();
  });

  app.delete('/contexts/:contextId', async (req, reply) => {
    const c = caller(req);
    const { contextId } = parse(I.ContextParams, req.params, 'path parameter');
    await s.code.removeContext(c.ctx, c.id, known(contextId));
    return reply.code(204).send();
  });
}
