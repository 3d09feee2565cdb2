/**
 * An upload's source stream as the two ways of writing it (relayed as DATA in file-write.ts, or filled into
 * the agent's file in file-fill.ts) both read it: chunks as Buffers, its end, and one error for a stream that
 * fails or closes before its end.
 */
import type { Readable } from 'node:stream';

import { SandboxError } from '../errors/index.js';

export interface UploadListener {
  /** A non-empty chunk, in order. */
  chunk(buf: Buffer): void;
  end(): void;
  /** The source failed, or closed before its end; nothing more comes. */
  fail(err: SandboxError): void;
}

/** Listens to `src` for the upload of `path`; returns the function that stops listening. */
export function followUpload(src: Readable, path: string, on: UploadListener): () => void {
  let ended = false;
  const onData = (chunk: unknown): void => {
    const buf = Buffer.isBuffer(chunk) ? chunk : typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk as Uint8Array);
    if (buf.length > 0) on.chunk(buf);
  };
  const onEnd = (): void => {
    ended = true;
    on.end();
  };
  const onError = (e: unknown): void => {
    on.fail(new SandboxError(`writing ${path} failed: ${e instanceof Error ? e.message : String(e)}`, { path }));
  };
  const onClose = (): void => {
    if (!ended) onError(new Error('the upload was cut off before its end'));
  };
  src.on('data', onData);
  src.once('end', onEnd);
  src.once('error', onError);
  src.once('close', onClose);
  return () => {
    src.off('data', onData);
    src.off('end', onEnd);
    src.off('error', onError);
    src.off('close', onClose);
  };
}
