/**
 * Sandboxes a driver is creating, starting, stopping or destroying right now. The verbs that change a
 * sandbox's container claim its id for their whole length, so two of them never interleave on one
 * sandbox (a destroy in the middle of a create would leave half of each); a second verb is refused at
 * once with a conflict rather than queued, since the services above already serialize the ones they
 * mean to run in turn (src/sandboxes/lifecycle-service.ts). Each driver keeps its own set.
 */
import { ConflictError } from '../errors/index.js';

export class BusyIds {
  private readonly ids = new Set<string>();

  /** Take `id`, or throw a conflict with `message` when another verb holds it. Pair with `release` in a finally. */
  claim(id: string, message: string): void {
    if (this.ids.has(id)) throw new ConflictError(message, { id });
    this.ids.add(id);
  }

  /** Run `fn` holding `id` (claimed as `claim` does), released however it ends. */
  async hold<T>(id: string, message: string, fn: () => Promise<T>): Promise<T> {
    this.claim(id, message);
    try {
      return await fn();
    } finally {
      this.release(id);
    }
  }

  release(id: string): void {
    this.ids.delete(id);
  }

  has(id: string): boolean {
    return this.ids.has(id);
  }
}
