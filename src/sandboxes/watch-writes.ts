/**
 * The files API writes a file through a temporary one beside it
 * (`.capsule-write-<pid>-<n>`, agent/files.c) and renames it into place, so
 * that a reader never sees half a file. A watcher should see the file the
 * caller wrote, not that mechanism: this filter drops the temporary file's
 * events and turns the create of the target that the rename produces into
 * create + write, what a watcher sees when a program writes the file itself.
 *
 * The names are matched exactly (pid and counter are digits), so a user's own
 * `.capsule-write-notes` still shows.
 */
import type { WatchEvent } from '../agent/types.js';

const AGENT_TEMP = /(^|\/)\.capsule-write-\d+-\d+$/;

const dirOf = (p: string) => (p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '');

/** A per-watch filter: each agent event in, the events to report out (none, one, or create + write). */
export function hideAgentWrites(): (ev: WatchEvent) => WatchEvent[] {
  // Renames of temporary files seen per directory and not yet matched by the target's create.
  const pending = new Map<string, number>();
  return (ev) => {
    if (ev.type === 'overflow') {
      // What was pending may have been lost with the dropped events.
      pending.clear();
      return [ev];
    }
    if (AGENT_TEMP.test(ev.path)) {
      if (ev.type === 'rename') pending.set(dirOf(ev.path), (pending.get(dirOf(ev.path)) ?? 0) + 1);
      return [];
    }
    const dir = dirOf(ev.path);
    const n = ev.type === 'create' ? (pending.get(dir) ?? 0) : 0;
    if (n === 0) return [ev];
    if (n === 1) pending.delete(dir);
    else pending.set(dir, n - 1);
    return [ev, { type: 'write', path: ev.path, isDir: false }];
  };
}
