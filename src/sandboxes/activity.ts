/**
 * When each sandbox with an idle policy (lifecycle.idleMs) was last used, and
 * whether something is using it right now. A command or file call touches it;
 * a foreground command or an output stream holds it for as long as it runs, so
 * an agent waiting on a long command is never idle. In memory only: after a
 * daemon restart every sandbox counts as used at the restart.
 */
export class ActivityTracker {
  private readonly seen = new Map<string, { last: number; holds: number }>();

  /** Start tracking (or note a use of) a sandbox. */
  touch(id: string, now = Date.now()): void {
    const a = this.seen.get(id);
    if (a) a.last = now;
    else this.seen.set(id, { last: now, holds: 0 });
  }

  /** Busy until the returned function is called (once; later calls do nothing). */
  hold(id: string): () => void {
    this.touch(id);
    const a = this.seen.get(id)!;
    a.holds++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      a.holds--;
      a.last = Date.now();
    };
  }

  /** Ids being tracked, with their last use and whether they are busy. */
  *entries(): IterableIterator<[string, { last: number; busy: boolean }]> {
    for (const [id, a] of this.seen) yield [id, { last: a.last, busy: a.holds > 0 }];
  }

  forget(id: string): void {
    this.seen.delete(id);
  }
}
