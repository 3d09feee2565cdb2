/**
 * How the daemon's V8 heap grows (applied once, when the daemon starts).
 *
 * File transfers allocate a new 64 KiB Buffer for every chunk node:http reads from an upload and a
 * 1 MiB one for every agent frame of a download: 100 MB of backing stores per 100 MB moved, while the
 * JavaScript heap barely changes. With V8's own heap growing factor, which it derives at each full
 * collection from how fast the program allocated meanwhile, a daemon that had just served a burst of
 * small requests (1,500 command runs) set its next old-generation limit a few percent above the live
 * size; each transfer then crossed it again and again: ~5 full collections per 100 MB upload instead
 * of none, the daemon's CPU per 100 MB from ~95 ms to ~220 ms, and the upload at half the speed of the
 * same transfer on a fresh daemon (ADR 0016). A fixed factor of 3 (the limit at three times the live
 * heap after each full collection; V8's own factor ranges from 1.1 to 4) brings that back to about one
 * full collection per several transfers. A factor of 2 left 7-9 of them per five transfers.
 */
import v8 from 'node:v8';

/** The old generation's limit after a full collection: live size × (1 + this / 100). */
export const HEAP_GROWING_PERCENT = 200;

let tuned = false;

export function tuneHeap(): void {
  if (tuned) return;
  tuned = true;
  v8.setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
}
