/**
 * The replay buffer behind SSE resumability (2025-era Streamable HTTP,
 * `Last-Event-ID`): every SSE event a session sends gets an id naming its
 * stream and its place in it, and the recent events of each stream are kept
 * so that a client whose connection dropped can ask, with a GET carrying the
 * last id it saw, for what it missed on that stream (and only that stream).
 *
 * Memory is bounded, because what flows here is output from inside a sandbox
 * and therefore hostile in size: events and bytes per stream (the oldest
 * events go first; the newest, which may hold the response, stays), finished
 * streams kept per session (the oldest goes first), and bytes per session
 * (finished streams go first, oldest first, then the oldest events of live
 * streams, never a live stream's newest event). A stream still waiting for
 * its response is never dropped whole.
 */

export interface ReplayLimits {
  /** Events kept per stream. */
  maxEvents: number;
  /** Bytes of SSE frames kept per stream. */
  maxBytes: number;
  /** Finished streams kept per session for late resumption. */
  maxFinishedStreams: number;
  /** Bytes kept per session, over all its streams. */
  maxTotalBytes: number;
}

export const DEFAULT_REPLAY_LIMITS: ReplayLimits = { maxEvents: 512, maxBytes: 4 * 1024 * 1024, maxFinishedStreams: 16, maxTotalBytes: 16 * 1024 * 1024 };

interface Held {
  seq: number;
  frame: string;
  bytes: number;
}

interface Stream {
  events: Held[];
  bytes: number;
  nextSeq: number;
  finished: boolean;
}

/** What a resuming GET gets: the frames after its id, and whether more may follow. */
export type Replay =
  | { kind: 'ok'; streamId: string; frames: string[]; finished: boolean }
  | { kind: 'unknown' };

/** An event id: `<stream>_<seq>`; both parts are ours, so anything else is unknown. */
const EVENT_ID = /^(s\d{1,9})_(\d{1,12})$/;

export class EventLog {
  private readonly streams = new Map<string, Stream>();
  private counter = 0;
  private total = 0;

  constructor(private readonly limits: ReplayLimits = DEFAULT_REPLAY_LIMITS) {}

  /** A new stream; its first frame is the priming event (id, no data) returned here. */
  open(retryMs: number): { streamId: string; priming: string } {
    const streamId = `s${++this.counter}`;
    this.streams.set(streamId, { events: [], bytes: 0, nextSeq: 1, finished: false });
    // The priming event gives the client an id to resume from before any message arrives.
    return { streamId, priming: `id: ${streamId}_0\nretry: ${retryMs}\ndata: \n\n` };
  }

  /** Record one JSON-RPC message on a stream; returns its SSE frame (with id). */
  record(streamId: string, json: string): string {
    const s = this.streams.get(streamId);
    const id = s ? `${streamId}_${s.nextSeq}` : undefined;
    const frame = `${id ? `id: ${id}\n` : ''}event: message\ndata: ${json}\n\n`;
    if (!s) return frame;
    const bytes = Buffer.byteLength(frame);
    s.events.push({ seq: s.nextSeq++, frame, bytes });
    s.bytes += bytes;
    this.total += bytes;
    // Keep the newest event even when it alone is over the byte limit: it may be the response.
    while (s.events.length > 1 && (s.events.length > this.limits.maxEvents || s.bytes > this.limits.maxBytes)) this.dropOldest(s);
    this.enforceTotal();
    return frame;
  }

  private dropOldest(s: Stream): void {
    const e = s.events.shift()!;
    s.bytes -= e.bytes;
    this.total -= e.bytes;
  }

  private drop(streamId: string): void {
    const s = this.streams.get(streamId);
    if (!s) return;
    this.total -= s.bytes;
    this.streams.delete(streamId);
  }

  /** The per-session byte bound: finished streams first (oldest first), then old events of live ones. */
  private enforceTotal(): void {
    for (const [id, s] of this.streams) {
      if (this.total <= this.limits.maxTotalBytes) return;
      if (s.finished) this.drop(id);
    }
    for (const s of this.streams.values()) {
      while (this.total > this.limits.maxTotalBytes && s.events.length > 1) this.dropOldest(s);
      if (this.total <= this.limits.maxTotalBytes) return;
    }
  }

  /** The stream will get no more events (its responses were all sent). */
  finish(streamId: string): void {
    const s = this.streams.get(streamId);
    if (!s || s.finished) return;
    s.finished = true;
    const finished = [...this.streams].filter(([, v]) => v.finished);
    for (const [id] of finished.slice(0, Math.max(0, finished.length - this.limits.maxFinishedStreams))) this.drop(id);
    this.enforceTotal();
  }

  /**
   * The frames after `lastEventId` on its stream. Events older than the buffer
   * are gone; replay then starts at the oldest event still held.
   */
  after(lastEventId: string): Replay {
    const m = EVENT_ID.exec(lastEventId.trim());
    const s = m ? this.streams.get(m[1]!) : undefined;
    if (!m || !s) return { kind: 'unknown' };
    const seq = Number(m[2]);
    return { kind: 'ok', streamId: m[1]!, frames: s.events.filter((e) => e.seq > seq).map((e) => e.frame), finished: s.finished };
  }

  /** Bytes held now, over all streams (for tests and limits). */
  get heldBytes(): number {
    return this.total;
  }

  get streamCount(): number {
    return this.streams.size;
  }
}
