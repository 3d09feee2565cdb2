/**
 * The daemon's half of a file handoff (feature `file-handoff`, ADR 0016): an upload's bytes go from their
 * source straight into the temp file the agent made, through a descriptor the runtime opened, with no agent
 * frames in between. Chunks that arrive while a write is in flight go together in the next `writev`; the
 * source is paused while more than FILL_HIGH bytes wait, so memory stays bounded whatever the client's speed.
 */
import fs from 'node:fs';
import type { Readable } from 'node:stream';

import { SandboxError } from '../errors/index.js';
import { agentError } from './errors.js';
import { followUpload } from './upload-source.js';

/**
 * A source that can put its bytes into a file descriptor itself, better than as a stream (an upload read
 * straight off its socket, api/raw-upload.ts). It answers undefined when it cannot any more (something
 * already read it as a stream); it then owns nothing, and the stream is used.
 */
export const DIRECT_FILL = Symbol('capsule.directFill');
export interface DirectFill {
  [DIRECT_FILL](fd: number, path: string): Fill | undefined;
}

function hasDirectFill(data: unknown): data is DirectFill {
  return typeof (data as Partial<DirectFill> | null)?.[DIRECT_FILL] === 'function';
}

/** Bytes the source may have waiting for the file before it is paused. */
export const FILL_HIGH = 4 * 1024 * 1024;
/** Most buffers one writev takes (the kernel's IOV_MAX is 1024). */
const MAX_IOV = 256;

export interface Fill {
  /** Bytes written, once the source ended and the file is closed; rejects with the product's error. */
  readonly done: Promise<number>;
  /** Stop: the source is let go (paused, not consumed) and the descriptor closed; `done` rejects with `err`. */
  cancel(err: Error): void;
}

/** Writes `data` into `fd` (which it owns and closes, also on failure). */
export function fillFile(fd: number, data: Readable | Buffer, path: string): Fill {
  if (hasDirectFill(data)) {
    const direct = data[DIRECT_FILL](fd, path);
    if (direct) return direct;
  }
  let resolveDone!: (n: number) => void;
  let rejectDone!: (e: Error) => void;
  const done = new Promise<number>((res, rej) => {
    resolveDone = res;
    rejectDone = rej;
  });
  // The caller may not wait on `done` after it cancelled; a rejection nobody reads is not a crash.
  done.catch(() => undefined);
  let over = false;
  /** A write is in flight: closing waits for it, so its descriptor number is never reused under it. */
  let busy = false;
  let closeWhenIdle: (() => void) | undefined;
  let written = 0;
  let detach = (): void => undefined;

  const closeThen = (then: (err: NodeJS.ErrnoException | null) => void): void => {
    const close = () => fs.close(fd, then);
    if (busy) closeWhenIdle = close;
    else close();
  };
  const finish = (): void => {
    if (over) return;
    over = true;
    detach();
    closeThen((err) => (err ? rejectDone(fillError(err, path)) : resolveDone(written)));
  };
  const failWith = (e: Error): void => {
    if (over) return;
    over = true;
    detach();
    if (!Buffer.isBuffer(data)) data.pause();
    closeThen(() => rejectDone(e));
  };
  /** After each write: the pending close, or the next step. */
  const settled = (next: () => void): void => {
    busy = false;
    if (closeWhenIdle) return closeWhenIdle();
    next();
  };

  if (Buffer.isBuffer(data)) {
    const step = (): void => {
      if (over) return;
      if (written >= data.length) return finish();
      busy = true;
      fs.write(fd, data, written, data.length - written, null, (err, n) =>
        settled(() => {
          if (err || n <= 0) return failWith(fillError(err ?? new Error('the file took no bytes'), path));
          written += n;
          step();
        }),
      );
    };
    step();
    return { done, cancel: failWith };
  }

  const parts: Buffer[] = [];
  let queued = 0;
  let ended = false;
  const kick = (): void => {
    if (busy || over) return;
    if (queued === 0) {
      if (ended) finish();
      return;
    }
    busy = true;
    const batch = parts.splice(0, MAX_IOV);
    let size = 0;
    for (const b of batch) size += b.length;
    fs.writev(fd, batch, (err, n) =>
      settled(() => {
        if (over) return;
        if (err || n <= 0) return failWith(fillError(err ?? new Error('the file took no bytes'), path));
        written += n;
        queued -= n;
        if (n < size) parts.unshift(...rest(batch, n));
        if (queued < FILL_HIGH && data.isPaused() && !ended) data.resume();
        kick();
      }),
    );
  };
  detach = followUpload(data, path, {
    chunk: (buf) => {
      parts.push(buf);
      queued += buf.length;
      if (queued >= FILL_HIGH) data.pause();
      kick();
    },
    end: () => {
      ended = true;
      kick();
    },
    fail: failWith,
  });
  return { done, cancel: failWith };
}

/** What is left of `batch` after its first `n` bytes. */
function rest(batch: Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  let skip = n;
  for (const b of batch) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}

/** A failed write, said as the agent would say it (ENOSPC, EDQUOT, EFBIG ... keep their errno and its class). */
export function fillError(e: unknown, path: string): Error {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  // Node says "ENOSPC: no space left on device, write": keep only the middle.
  const msg = e instanceof Error ? e.message.replace(/^E[A-Z0-9]+: /, '').replace(/, (write|writev|close)\b.*$/, '') : String(e);
  if (typeof code === 'string' && /^E[A-Z0-9]+$/.test(code)) return agentError(code, `write ${path}: ${msg}`, path);
  return new SandboxError(`write ${path}: ${msg}`, { path });
}
