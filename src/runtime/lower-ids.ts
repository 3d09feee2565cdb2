/**
 * Which layer trees a sandbox's overlay sits on, by identity ("<dev>:<ino>",
 * one per line in <sandbox dir>/lower.id). A rebuild renames a template's
 * tree (templates/<name>/old-*), and it may only be deleted once no sandbox
 * records it here. Every driver that stacks layers in the shared sandboxes
 * directory writes this file, so one scan (OciRuntimeDriver.templateInUse)
 * covers sandboxes of every backend.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';

export const LOWER_ID_FILE = 'lower.id';

export async function recordLowerIds(sandboxDir: string, layerPaths: readonly string[]): Promise<void> {
  const ids = await Promise.all(
    layerPaths.map(async (p) => {
      const st = await fsp.stat(p);
      return `${st.dev}:${st.ino}`;
    }),
  );
  await fsp.writeFile(path.join(sandboxDir, LOWER_ID_FILE), ids.join('\n'), { mode: 0o600 });
}
