/**
 * The command channel: GET /v1/channel upgrades to one WebSocket per client connection that carries
 * buffered foreground commands as small JSON messages with ids, for clients that run many short
 * commands (the SDK's `commands.run`). It is a thin view of the same CommandService.run as POST
 * /v1/sandboxes/:id/commands: the same body schema (RunCommandRequest) and errors, the same
 * RequestContext, and every message authenticates again with the key the channel was opened with, so
 * a revoked key stops at once and each command counts against the key's rate limit, like a request.
 *
 * Why: on this kind of VM an HTTP request costs more than the agent's own fork+exec of `true` (a
 * bare node:http proxy in front of the agent doubled its round trip); a message on an open socket
 * skips the request parsing, routing and response framing (ADR 0016).
 *
 * Client → daemon (text): `{"op":"run","id":1,"sandboxId":"sbx-…","body":{…RunCommandRequest}}`, or
 * `{"op":"cancel","id":1}` (kills that run's command, as hanging up on the POST does).
 * Daemon → client (text): `{"id":1,"result":{…CommandResult}}` or `{"id":1,"error":{code,message,details?}}`.
 * Closing the socket kills the commands still running on it.
 */
import type { FastifyBaseLogger } from 'fastify';
import { requestContext } from '../../auth/context.js';
import { HTTP_STATUS, InternalError, InvalidArgumentError, RateLimitedError, isCapsuleError } from '../../errors/index.js';
import { ChannelClientMessage, ChannelServerMessage, RunCommandRequest, SandboxParams, type CommandResult } from '../../schemas/index.js';
import { fastChannelRun, fastRunCommandRequest, fastSandboxParams } from '../../schemas/fast.js';
import { presentedSecret, principalOf } from '../auth.js';
import { parse, type RouteTable } from '../route.js';
import type { SocketChannel } from '../socket.js';
import type { CancelSignal } from '../../sandboxes/commands.js';
import type { Services } from '../services.js';

/**
 * A run's cancellation: what CommandService.run needs of an AbortSignal (CancelSignal), without the
 * EventTarget machinery. Cancelled before the service listens, it calls the listener as soon as it is added.
 */
class RunCancel implements CancelSignal {
  private listener: (() => void) | undefined;
  private cancelled = false;

  addEventListener(_type: 'abort', listener: () => void): void {
    if (this.cancelled) listener();
    else this.listener = listener;
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    if (this.listener === listener) this.listener = undefined;
  }

  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    const l = this.listener;
    this.listener = undefined;
    l?.();
  }
}

/** Runs one channel may have in flight; more are answered rate_limited. */
export const MAX_CHANNEL_IN_FLIGHT = 1024;

export function channelRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'GET',
    url: '/v1/channel',
    summary:
      'WebSocket command channel: buffered foreground commands as text messages with ids ' +
      '({"op":"run","id","sandboxId","body": the body of POST /v1/sandboxes/:id/commands} or {"op":"cancel","id"}); ' +
      'each answer is {"id","result": CommandResult} or {"id","error"}. Closing it kills the commands still running on it.',
    tag: 'commands',
    responses: { 101: { description: 'Switching to the WebSocket protocol; text frames are answers', schema: ChannelServerMessage } },
    errors: ['invalid_argument', 'not_found', 'conflict', 'rate_limited'],
    handler: async () => undefined,
    socket: async ({ req }) => {
      // The upgrade itself was authenticated by the onRequest hook; messages authenticate again with this key.
      const secret = presentedSecret(req);
      const channelId = String(req.id);
      return { cancel: () => undefined, socket: (ch) => serveChannel(ch, s, secret, channelId, req.log) };
    },
  });
}

function serveChannel(ch: SocketChannel, s: Services, secret: string | undefined, channelId: string, log: FastifyBaseLogger): void {
  const inFlight = new Map<number, RunCancel>();
  ch.onClose(() => {
    for (const c of inFlight.values()) c.cancel();
    inFlight.clear();
  });

  const answerError = (id: number, err: unknown): void => {
    const e = isCapsuleError(err) ? err : new InternalError('internal error; see the daemon log');
    s.prometheus?.apiError(e.code);
    if (!isCapsuleError(err)) log.error({ err, channel: channelId, request: id }, 'unexpected error');
    else if (HTTP_STATUS[e.code] >= 500) log.error({ err, channel: channelId, request: id }, 'request failed');
    ch.sendJson({ id, ...e.toJSON() });
  };

  const run = async (id: number, sandboxId: string, body: unknown, cancel: RunCancel): Promise<void> => {
    let result: CommandResult;
    try {
      const principal = principalOf(secret, { keys: s.keyStore, limiter: s.limiter });
      // Common shapes are checked by hand, anything else (and every error) by the schemas (schemas/fast.ts).
      const params = fastSandboxParams(sandboxId) ?? parse(SandboxParams, { id: sandboxId }, 'path parameter');
      const req = fastRunCommandRequest(body) ?? parse(RunCommandRequest, body, 'body');
      if (req.background || req.stream) {
        throw new InvalidArgumentError('the command channel runs buffered foreground commands; start background or streamed ones with POST /v1/sandboxes/:id/commands');
      }
      const ctx = requestContext(principal, `${channelId}/${id}`);
      result = (await s.commands.run(ctx, params.id, req, { signal: cancel })) as CommandResult;
    } catch (err) {
      answerError(id, err);
      return;
    } finally {
      inFlight.delete(id);
    }
    ch.sendJson({ id, result });
  };

  ch.onMessage((msg) => {
    if ('bytes' in msg) return ch.fail(new InvalidArgumentError('the command channel takes JSON text frames, not binary ones'));
    const fast = fastChannelRun(msg.text);
    const m = fast ? ({ success: true, data: fast } as const) : ChannelClientMessage.safeParse(msg.text);
    if (!m.success) {
      // A message that names its id gets an answer; one that does not is a broken client.
      const id = (msg.text as { id?: unknown } | undefined)?.id;
      const err = new InvalidArgumentError(
        `invalid channel message: ${m.error.issues[0]?.path.join('.') || '(root)'}: ${m.error.issues[0]?.message ?? 'not JSON'}`,
      );
      if (typeof id === 'number' && Number.isSafeInteger(id) && id >= 0 && !inFlight.has(id)) return answerError(id, err);
      return ch.fail(err);
    }
    const data = m.data;
    if (data.op === 'cancel') {
      inFlight.get(data.id)?.cancel();
      return;
    }
    if (inFlight.has(data.id)) return ch.fail(new InvalidArgumentError(`request id ${data.id} is already in flight on this channel`));
    if (inFlight.size >= MAX_CHANNEL_IN_FLIGHT) {
      return answerError(data.id, new RateLimitedError(`this channel already runs ${MAX_CHANNEL_IN_FLIGHT} commands; wait for some to finish`));
    }
    const cancel = new RunCancel();
    inFlight.set(data.id, cancel);
    void run(data.id, data.sandboxId, data.body, cancel);
  });
}
