/** File watches: events under a directory of a sandbox, as NDJSON lines or WebSocket text frames. */
import { z } from 'zod';
import { SandboxPath } from './common.js';

export const WatchQuery = z.object({
  path: SandboxPath.describe('Directory to watch inside the sandbox'),
  recursive: z.enum(['true', 'false']).optional().describe('Also watch every directory below, including ones made later; default false'),
});

export const WATCH_EVENT_TYPES = ['create', 'write', 'remove', 'rename', 'chmod'] as const;

/** One line of a watch stream. */
export const WatchEvent = z.discriminatedUnion('type', [
  z.object({ type: z.literal('start'), path: z.string().describe('The watched directory; events after this line are all seen') }),
  z.object({
    type: z.enum(WATCH_EVENT_TYPES).describe('create, write (modified), remove, rename (the old name; the new one follows as create) or chmod (attributes)'),
    path: z.string().describe('Relative to the watched directory; "" for the directory itself'),
    isDir: z.boolean().optional().describe('True when the path is a directory'),
  }),
  z.object({ type: z.literal('overflow'), description: z.string().describe('Events were lost (the client or the queue fell behind): rescan what you track') }),
  z.object({ type: z.literal('end'), reason: z.enum(['gone', 'ended']).describe('gone: the watched directory was removed or moved; ended: the sandbox ended') }),
  z.object({ type: z.literal('error'), error: z.object({ code: z.string(), message: z.string() }) }),
]);
export type WatchEvent = z.infer<typeof WatchEvent>;
