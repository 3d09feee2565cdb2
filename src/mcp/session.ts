/**
 * The 2025-era Streamable HTTP session: SessionTransport is our own
 * implementation of the SDK's Transport interface, living in the fastify
 * routes of http.ts, one per `Mcp-Session-Id`. We do not use the SDK's
 * sessionful transport because it answers every POST the same way (all SSE
 * or all JSON); here each POST gets what suits it:
 *
 *  - a tools/call that carries a progress token is answered with an SSE
 *    stream, so progress notifications reach the client while the command runs;
 *  - everything else is answered with one JSON body.
 *
 * Both are allowed by the spec (the client must accept either). GET opens the
 * session's stream for server-initiated messages.
 *
 * Resumability: every SSE stream starts with a priming event (an id, no data)
 * and every event carries an id; the EventLog keeps the recent events of each
 * stream. When a client loses a POST's stream, the request goes on (a dropped
 * connection is not a cancellation) and its events are kept; a GET with
 * `Last-Event-ID` replays what came after that id on that stream, then, if
 * the request is still running, carries the rest of it.
 */
import type { ServerResponse } from 'node:http';
import {
  isJSONRPCErrorResponse,
  isJSONRPCNotification,
  isJSONRPCRequest,
  isJSONRPCResultResponse,
  type JSONRPCMessage,
  type MessageExtraInfo,
  type RequestId,
  type Transport,
  type TransportSendOptions,
} from '@modelcontextprotocol/server';
import { EventLog, type ReplayLimits } from './replay.js';

const KEEPALIVE_MS = 25_000;
/** How long a client waits before reconnecting to a dropped stream (the SSE `retry` field). */
const RETRY_MS = 1000;

export function openSse(raw: ServerResponse, sessionId: string | undefined): void {
  raw.writeHead(200, {
    'content-type': 'text/event-stream',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    ...(sessionId ? { 'mcp-session-id': sessionId } : {}),
  });
  raw.flushHeaders();
}

function isResponse(m: JSONRPCMessage): m is JSONRPCMessage & { id: RequestId } {
  return isJSONRPCResultResponse(m) || isJSONRPCErrorResponse(m);
}

function writable(raw: ServerResponse | undefined): raw is ServerResponse {
  return raw !== undefined && !raw.writableEnded && !raw.destroyed;
}

/** The messages one POST waits for: the responses to its requests (and, in SSE mode, what relates to them). */
class Exchange {
  private readonly waiting: Set<RequestId>;
  private readonly responses: JSONRPCMessage[] = [];
  private finished = false;
  /** Where SSE frames go now; undefined while the client is disconnected. */
  private sink: ServerResponse | undefined;
  readonly streamId: string | undefined;

  constructor(
    ids: RequestId[],
    private readonly mode: 'json' | 'sse',
    raw: ServerResponse,
    private readonly sessionId: string,
    private readonly batch: boolean,
    private readonly log: EventLog,
  ) {
    this.waiting = new Set(ids);
    if (mode === 'sse') {
      const { streamId, priming } = log.open(RETRY_MS);
      this.streamId = streamId;
      openSse(raw, sessionId);
      raw.write(priming);
    }
    this.attachSink(raw);
  }

  get ids(): RequestId[] {
    return [...this.waiting];
  }

  get isFinished(): boolean {
    return this.finished;
  }

  /** True when the events of this exchange survive a dropped connection. */
  get resumable(): boolean {
    return this.mode === 'sse';
  }

  deliver(id: RequestId, msg: JSONRPCMessage): void {
    if (this.finished) return;
    const response = isResponse(msg);
    if (this.streamId !== undefined) {
      const frame = this.log.record(this.streamId, JSON.stringify(msg));
      if (writable(this.sink)) this.sink.write(frame);
    } else if (response) this.responses.push(msg);
    // In JSON mode there is nowhere to put a notification about a request: it is dropped.
    if (response) this.settle(id);
  }

  /** The request will get no (further) response: answered, or cancelled. */
  settle(id: RequestId): void {
    this.waiting.delete(id);
    if (this.waiting.size === 0) this.finish();
  }

  finish(): void {
    if (this.finished) return;
    this.finished = true;
    if (this.streamId !== undefined) this.log.finish(this.streamId);
    const raw = this.sink;
    this.sink = undefined;
    if (!writable(raw)) return;
    if (this.mode === 'sse') raw.end();
    else if (this.responses.length === 0) raw.writeHead(202, { 'mcp-session-id': this.sessionId }).end();
    else {
      raw.writeHead(200, { 'content-type': 'application/json', 'mcp-session-id': this.sessionId });
      raw.end(JSON.stringify(this.batch ? this.responses : this.responses[0]));
    }
  }

  /** A resuming GET takes over the rest of the stream (its replayed frames are already written). */
  resume(raw: ServerResponse): void {
    if (this.finished) raw.end();
    else this.attachSink(raw);
  }

  private attachSink(raw: ServerResponse): void {
    // A second resumption of the same stream wins; the older connection is ended, not left hanging.
    if (writable(this.sink) && this.sink !== raw) this.sink.end();
    this.sink = raw;
    raw.once('close', () => {
      if (this.sink === raw) this.sink = undefined;
    });
  }
}

export class SessionTransport implements Transport {
  onclose?: (() => void) | undefined;
  onerror?: ((error: Error) => void) | undefined;
  onmessage?: Transport['onmessage'];
  private readonly byRequest = new Map<RequestId, Exchange>();
  /** Live SSE exchanges by stream id, for resumption. */
  private readonly byStream = new Map<string, Exchange>();
  private readonly log: EventLog;
  private standalone: { raw: ServerResponse; timer: NodeJS.Timeout } | undefined;
  private standaloneStreamId: string | undefined;
  private closed = false;
  /** Requests and streams open now; an idle session may be swept. */
  busy = 0;

  constructor(
    readonly sessionId: string,
    limits?: ReplayLimits,
  ) {
    this.log = new EventLog(limits);
  }

  async start(): Promise<void> {}

  async send(message: JSONRPCMessage, options?: TransportSendOptions): Promise<void> {
    const id = isResponse(message) ? message.id : options?.relatedRequestId;
    if (id === undefined) {
      // Server-initiated: on the GET stream (kept for its resumption), or dropped when there is none.
      if (this.standaloneStreamId === undefined) return;
      const frame = this.log.record(this.standaloneStreamId, JSON.stringify(message));
      if (writable(this.standalone?.raw)) this.standalone.raw.write(frame);
      return;
    }
    const ex = this.byRequest.get(id);
    if (!ex) return; // the client went away or cancelled
    if (isResponse(message)) this.byRequest.delete(id);
    ex.deliver(id, message);
    if (ex.isFinished && ex.streamId !== undefined) this.byStream.delete(ex.streamId);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const exchanges = new Set(this.byRequest.values());
    this.byRequest.clear();
    this.byStream.clear();
    for (const ex of exchanges) ex.finish();
    this.closeStandalone();
    this.onclose?.();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Bytes the replay buffer holds now (bounded by ReplayLimits). */
  get replayBytes(): number {
    return this.log.heldBytes;
  }

  /** Hand a POST's messages to the server; resolves once its HTTP response is complete or the client left. */
  async handlePost(messages: JSONRPCMessage[], batch: boolean, acceptsSse: boolean, raw: ServerResponse): Promise<void> {
    const requests = messages.filter(isJSONRPCRequest);
    // The tools need nothing from the HTTP request: the caller was resolved when the session opened.
    const extra: MessageExtraInfo = {};
    if (requests.length === 0) {
      for (const m of messages) this.dispatch(m, extra);
      raw.writeHead(202, { 'mcp-session-id': this.sessionId }).end();
      return;
    }
    const wantsProgress = requests.some((r) => r.method === 'tools/call' && (r.params as { _meta?: { progressToken?: unknown } } | undefined)?._meta?.progressToken !== undefined);
    const ex = new Exchange(
      requests.map((r) => r.id),
      wantsProgress && acceptsSse ? 'sse' : 'json',
      raw,
      this.sessionId,
      batch,
      this.log,
    );
    for (const r of requests) this.byRequest.set(r.id, ex);
    if (ex.streamId !== undefined) this.byStream.set(ex.streamId, ex);
    const closed = new Promise<void>((resolve) => raw.once('close', () => resolve()));
    this.busy++;
    try {
      for (const m of messages) this.dispatch(m, extra);
      await closed;
    } finally {
      this.busy--;
    }
    // The client hung up. An SSE exchange goes on, for a resuming GET; a JSON one has nowhere to answer.
    if (!ex.resumable) for (const id of ex.ids) if (this.byRequest.get(id) === ex) this.byRequest.delete(id);
  }

  private dispatch(m: JSONRPCMessage, extra: MessageExtraInfo): void {
    this.onmessage?.(m, extra);
    // A cancelled request gets no response (the SDK sends none): release its HTTP exchange.
    if (isJSONRPCNotification(m) && m.method === 'notifications/cancelled') {
      const id = (m.params as { requestId?: RequestId } | undefined)?.requestId;
      if (id !== undefined) {
        const ex = this.byRequest.get(id);
        this.byRequest.delete(id);
        ex?.settle(id);
        if (ex?.isFinished && ex.streamId !== undefined) this.byStream.delete(ex.streamId);
      }
    }
  }

  /**
   * GET with `Last-Event-ID`: replay the events after it on its stream and
   * carry the rest. False when there is nothing to resume (an unknown id, or a
   * stream that ended with nothing left to send): the route answers 404.
   */
  async resume(lastEventId: string, raw: ServerResponse): Promise<boolean> {
    const r = this.log.after(lastEventId);
    if (r.kind === 'unknown') return false;
    if (r.streamId === this.standaloneStreamId) {
      if (this.standalone && writable(this.standalone.raw)) return false;
      return this.serveStandalone(raw, r.frames);
    }
    const ex = this.byStream.get(r.streamId);
    if (r.finished && r.frames.length === 0) return false;
    openSse(raw, this.sessionId);
    for (const f of r.frames) raw.write(f);
    if (ex && !ex.isFinished) ex.resume(raw);
    else raw.end();
    this.busy++;
    await new Promise<void>((resolve) => (raw.closed ? resolve() : raw.once('close', () => resolve())));
    this.busy--;
    return true;
  }

  /** GET: the stream for messages the server sends on its own. Resolves when it closes. */
  async openStandalone(raw: ServerResponse): Promise<boolean> {
    if (this.standalone && writable(this.standalone.raw)) return false;
    return this.serveStandalone(raw, []);
  }

  private async serveStandalone(raw: ServerResponse, replay: string[]): Promise<boolean> {
    openSse(raw, this.sessionId);
    if (this.standaloneStreamId === undefined) {
      const { streamId, priming } = this.log.open(RETRY_MS);
      this.standaloneStreamId = streamId;
      raw.write(priming);
    }
    for (const f of replay) raw.write(f);
    const timer = setInterval(() => raw.write(': keep-alive\n\n'), KEEPALIVE_MS);
    timer.unref();
    this.standalone = { raw, timer };
    this.busy++;
    await new Promise<void>((resolve) => raw.once('close', () => resolve()));
    clearInterval(timer);
    if (this.standalone?.raw === raw) this.standalone = undefined;
    this.busy--;
    return true;
  }

  private closeStandalone(): void {
    const s = this.standalone;
    this.standalone = undefined;
    if (s) {
      clearInterval(s.timer);
      s.raw.end();
    }
  }
}
