import { z } from 'zod';
import { FileMode, LIMITS, SandboxPath } from './common.js';

export const FILE_TYPES = ['file', 'dir', 'symlink', 'fifo', 'socket', 'char', 'block', 'unknown'] as const;

/**
 * File metadata: string pairs kept with a file as extended attributes, `user.e2b.<key>` (ADR 0015). The
 * rules are E2B envd 0.6.2's, so that what either view writes the other accepts and shows.
 */
export const FILE_METADATA = {
  /** The attribute namespace both views share. */
  xattrPrefix: 'user.e2b.',
  /** A key's bytes: the kernel's 255-byte attribute name less the prefix. */
  maxKeyBytes: 246,
  /** Per file: keys, values and the prefix once per key (one ext4 attribute block). */
  maxTotalBytes: 4096,
  /** Keys per file (on ext4 fewer fit 4 KiB anyway: each attribute costs a header). */
  maxKeys: 128,
} as const;

export const MetadataKey = z
  .string()
  .min(1)
  .max(FILE_METADATA.maxKeyBytes)
  .regex(/^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/, "keys use only letters, digits and !#$%&'*+-.^_`|~ (HTTP token characters)")
  .describe(`A metadata key: HTTP token characters, 1-${FILE_METADATA.maxKeyBytes} bytes; stored lowercased`);
export const MetadataValue = z
  .string()
  .max(FILE_METADATA.maxTotalBytes)
  .regex(/^[\x20-\x7e]*$/, 'values are printable US-ASCII')
  .describe('A metadata value: printable US-ASCII');

/** Size of metadata as the file system holds it: each key with its prefix, plus each value. */
export function metadataBytes(m: Record<string, string>): number {
  let n = 0;
  for (const [k, v] of Object.entries(m)) n += FILE_METADATA.xattrPrefix.length + Buffer.byteLength(k) + Buffer.byteLength(v);
  return n;
}

/** Metadata as a write gives it: replaces all of the file's metadata (an empty object clears it). */
export const FileMetadata = z
  .record(MetadataKey, MetadataValue)
  .superRefine((m, ctx) => {
    const keys = Object.keys(m);
    if (keys.length > FILE_METADATA.maxKeys) ctx.addIssue({ code: 'custom', message: `at most ${FILE_METADATA.maxKeys} metadata keys per file` });
    if (new Set(keys.map((k) => k.toLowerCase())).size !== keys.length) ctx.addIssue({ code: 'custom', message: 'metadata keys differ only in case (keys are stored lowercased)' });
    const bytes = metadataBytes(m);
    if (bytes > FILE_METADATA.maxTotalBytes) {
      ctx.addIssue({ code: 'custom', message: `metadata takes ${bytes} bytes, at most ${FILE_METADATA.maxTotalBytes} per file (keys with the ${FILE_METADATA.xattrPrefix} prefix, plus values)` });
    }
  })
  .describe(
    `User metadata kept with the file as extended attributes (${FILE_METADATA.xattrPrefix}<key>), shared with the E2B view. ` +
      `At most ${FILE_METADATA.maxKeys} keys and ${FILE_METADATA.maxTotalBytes} bytes per file`,
  );
export type FileMetadata = z.infer<typeof FileMetadata>;

export const FileEntry = z.object({
  name: z.string().describe('Name decoded as UTF-8; invalid bytes replaced'),
  nameBase64: z.string().optional().describe('Exact name bytes, present only when the name is not valid UTF-8'),
  path: z.string(),
  type: z.enum(FILE_TYPES),
  size: z.number(),
  mode: z.number().int().describe('st_mode: type and permission bits'),
  mtime: z.string().describe('Modification time, ISO 8601'),
  symlinkTarget: z.string().optional(),
  metadata: z
    .record(z.string(), z.string())
    .optional()
    .describe('User metadata (extended attributes under user.e2b.); absent when there is none. Read from inside the sandbox, so it may hold keys set there'),
  metadataPartial: z
    .literal(true)
    .optional()
    .describe(`Some of the file's metadata is not shown: over ${FILE_METADATA.maxKeys} keys or ${FILE_METADATA.maxTotalBytes} bytes, unreadable, or not valid UTF-8`),
});
export type FileEntry = z.infer<typeof FileEntry>;

export const PathQuery = z.object({ path: SandboxPath });
export const ReadFileQuery = z.object({
  path: SandboxPath,
});
export const WriteFileQuery = z.object({
  path: SandboxPath,
  mode: FileMode.optional(),
  metadata: z
    .string()
    .max(64 * 1024)
    .optional()
    .describe('File metadata as a JSON object of strings (see FileMetadata); replaces the file\'s metadata. Without it the new file has none'),
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
export const WriteFileResponse = z.object({
  path: z.string(),
  size: z.number(),
  metadata: FileMetadata.optional().describe('The metadata the write set (keys lowercased), when it was given one'),
});
export type WriteFileResponse = z.infer<typeof WriteFileResponse>;
