/**
 * envd's `filesystem.Filesystem` service (spec/envd/filesystem/filesystem.proto in e2b-dev/E2B) in
 * Connect's JSON encoding, and the EntryInfo its answers and the /files upload carry.
 */
import { z } from 'zod';
import { LIMITS } from '../common.js';
import { Uint32, message } from './proto-json.js';

const Path = z.string().min(1).max(LIMITS.maxPath).refine((s) => !s.includes('\0'), 'must not contain NUL');

export const StatRequest = message({ path: Path });
export const MakeDirRequest = message({ path: Path });
export const RemoveRequest = message({ path: Path });
export const MoveRequest = message({ source: Path, destination: Path });
export const ListDirRequest = message({ path: Path, depth: Uint32.optional() });
export const WatchDirRequest = message({
  path: Path,
  recursive: z.boolean().optional(),
  includeEntry: z.boolean().optional(),
  allowNetworkMounts: z.boolean().optional(),
});
export const CreateWatcherRequest = WatchDirRequest;
export const WatcherRequest = message({ watcherId: z.string().min(1).max(64) });

export const FILE_TYPE = { file: 'FILE_TYPE_FILE', dir: 'FILE_TYPE_DIRECTORY', symlink: 'FILE_TYPE_SYMLINK' } as const;
export const EVENT_TYPE = {
  create: 'EVENT_TYPE_CREATE',
  write: 'EVENT_TYPE_WRITE',
  remove: 'EVENT_TYPE_REMOVE',
  rename: 'EVENT_TYPE_RENAME',
  chmod: 'EVENT_TYPE_CHMOD',
} as const;

/** EntryInfo in JSON (size is an int64, so a string). */
export interface EntryInfo {
  name: string;
  type: (typeof FILE_TYPE)[keyof typeof FILE_TYPE] | 'FILE_TYPE_UNSPECIFIED';
  path: string;
  size: string;
  mode: number;
  permissions: string;
  owner: string;
  group: string;
  modifiedTime: string;
  symlinkTarget?: string;
  /** Field 11 (envd 0.6.2): the file's `user.e2b.*` extended attributes, keys without the prefix. */
  metadata?: Record<string, string>;
}

export interface FilesystemEvent {
  name: string;
  type: (typeof EVENT_TYPE)[keyof typeof EVENT_TYPE];
}

/** WatchDirResponse: one of start, filesystem, keepalive. */
export type WatchDirResponse = { start: Record<string, never> } | { filesystem: FilesystemEvent } | { keepalive: Record<string, never> };
