/**
 * File watches: GET /v1/sandboxes/:id/files/watch as an NDJSON stream, or the
 * same URL upgraded to a WebSocket (one WatchEvent per text frame). The watch
 * starts before the answer does, so a bad path or a missing directory is an
 * ordinary HTTP error, and every event after the `start` line is seen.
 */
import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import { startNdjson } from '../ndjson.js';
import { SandboxParams, WatchEvent, WatchQuery } from '../../schemas/index.js';
import type { WatchSink } from '../../sandboxes/watch.js';
import { z } from 'zod';

/** Events that arrive between the start of the watch and the answer: few, but bounded all the same. */
const HELD_MAX = 1024;

/** A sink that holds events until the transport is known, then hands them over in order. */
function deferredSink(): { sink: WatchSink; attach(target: WatchSink): void } {
  let target: WatchSink | undefined;
  const held: WatchEvent[] = [];
  let release: (() => void) | undefined;
  const ready = new Promise<void>((r) => (release = r));
  return {
    sink: {
      write: (ev) => (target ? target.write(ev) : (held.push(ev), held.length < HELD_MAX)),
      drained: () => (target ? target.drained() : ready),
    },
    attach(t) {
      for (const ev of held.splice(0)) t.write(ev);
      target = t;
      release?.();
    },
  };
}

export function watchRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/files/watch',
    summary:
      'Watch a directory: NDJSON (or, upgraded, WebSocket text frames) of WatchEvent: start, then create / write / remove / rename / chmod with paths relative to it, ' +
      'overflow when events were lost, end. recursive=true follows every directory below, including new ones. It lasts until the client goes away or the sandbox ends.',
    tag: 'files',
    params: SandboxParams,
    query: WatchQuery,
    responses: { 200: { description: 'WatchEvent per line', contentType: 'application/x-ndjson', schema: z.array(WatchEvent) } },
    errors: ['rate_limited'],
    handler: async () => undefined,
    socket: async ({ params, query, ctx }) => {
      const d = deferredSink();
      const w = await s.watches.watch(ctx, params.id, query.path, { recursive: query.recursive === 'true' }, d.sink);
      return {
        cancel: () => w.stop(),
        http: async (reply) => {
          const out = startNdjson(reply);
          out.onClose(() => w.stop());
          d.attach({ write: (ev) => out.write(ev), drained: () => out.drained() });
          await w.done;
          out.end();
        },
        socket: (ch) => {
          ch.onClose(() => w.stop());
          d.attach({ write: (ev) => ch.sendJson(ev), drained: () => ch.drained() });
          void w.done.then(() => ch.close(1000, 'ended'));
        },
      };
    },
  });
}
