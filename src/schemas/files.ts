import { z } from 'zod';
import { FileMode, LIMITS, SandboxPath } from './common.js';

export const FILE_TYPES = ['file', 'dir', 'symlink', 'fifo', 'socket', 'char', 'block', 'unknown'] as const;

export const FileEntry = z.object({
  name: z.string().describe('Name decoded as UTF-8; invalid bytes replaced'),
  nameBase64: z.string().optional().describe('Exact name bytes, present only when the name is not valid UTF-8'),
  path: z.string(),
  type: z.enum(FILE_TYPES),
  size: z.number(),
  mode: z.number().int().describe('st_mode: type and permission bits'),
  mtime: z.string().describe('Modification time, ISO 8601'),
  symlinkTarget: z.string().optional(),
});
export type FileEntry = z.infer<typeof FileEntry>;

export const PathQuery = z.object({ path: SandboxPath });
export const ReadFileQuery = z.object({
  path: SandboxPath,
});
export const WriteFileQuery = z.object({
  path: SandboxPath,
  mode: FileMode.optional(),
});
export const ListFilesQuery = z.object({
  path: SandboxPath,
  limit: z.coerce.number().int().min(1).max(LIMITS.maxListEntries).optional().describe(`At most this many entries; default ${LIMITS.defaultListEntries}`),
});
export const RemoveFileQuery = z.object({
  path: SandboxPath,
  recursive: z.enum(['true', 'false']).optional().describe('Remove directories and their contents'),
});
export const MakeDirRequest = z.object({ path: SandboxPath }).strict();
export const RenameRequest = z.object({ from: SandboxPath, to: SandboxPath }).strict();

export const ListFilesResponse = z.object({ entries: z.array(FileEntry), truncated: z.boolean() });
export const WriteFileResponse = z.object({ path: z.string(), size: z.number() });
