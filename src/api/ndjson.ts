/**
 * Newline-delimited JSON responses: one JSON value per line, flushed as it is
 * produced. Used for streamed command output and template build progress.
 */
import type { FastifyReply } from 'fastify';

export interface NdjsonWriter {
  /** False when the socket's buffer is full: wait for drained() before producing more. */
  write(value: unknown): boolean;
  /** Resolves when the client has caught up, or went away. */
  drained(): Promise<void>;
  end(): void;
  /** True once the client went away; producers should stop. */
  readonly closed: boolean;
  onClose(listener: () => void): void;
}

export function startNdjson(reply: FastifyReply): NdjsonWriter {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'application/x-ndjson; charset=utf-8', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
  let closed = false;
  let ended = false;
  const listeners: Array<() => void> = [];
  res.on('close', () => {
    if (!closed) {
      closed = true;
      if (!ended) for (const l of listeners) l();
    }
  });
  return {
    write(value) {
      if (closed || ended) return true;
      return res.write(`${JSON.stringify(value)}\n`);
    },
    drained() {
      if (closed || ended || !res.writableNeedDrain) return Promise.resolve();
      return new Promise<void>((resolve) => {
        const done = () => {
          res.off('drain', done);
          res.off('close', done);
          resolve();
        };
        res.on('drain', done);
        res.on('close', done);
      });
    },
    end() {
      if (ended) return;
      ended = true;
      if (!closed) res.end();
    },
    get closed() {
      return closed;
    },
    onClose(l) {
      listeners.push(l);
    },
  };
}
