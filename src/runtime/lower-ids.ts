/**
 * Which layer trees a sandbox's overlay sits on, by identity (`<dev>:<ino>`,
 * one line per layer, topmost first, in `<sandboxDir>/lower.id`). Every driver
 * that stacks layers in the shared sandboxes directory (crun and gVisor) writes
 * this file, so one scan (OciRuntimeDriver.templateInUse) covers sandboxes of
 * every backend.
 *
 * Two readers: template pruning (a rebuilt template's old tree, renamed to
 * `templates/<name>/old-*`, may only be deleted once no sandbox records it),
 * and the start of a stopped sandbox. Its `lower*` symlinks name layers by
 * path, and a rebuild put a new tree at that path while the sandbox slept:
 * the start points each link back at the tree the sandbox was made on.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';

export const LOWER_ID_FILE = 'lower.id';

/** `<dev>:<ino>` of each layer directory, in the order given. */
export async function layerIds(layers: readonly string[]): Promise<string[]> {
  return Promise.all(
    layers.map(async (p) => {
      const st = await fsp.stat(p);
      return `${st.dev}:${st.ino}`;
    }),
  );
}

export async function writeLowerIds(sandboxDir: string, topFirst: readonly string[]): Promise<void> {
  await fsp.writeFile(path.join(sandboxDir, LOWER_ID_FILE), (await layerIds(topFirst)).join('\n'), { mode: 0o600 });
}

/** The name of the i-th layer link, topmost first (native/capsule-mount.c setup). */
function linkName(i: number): string {
  return i === 0 ? 'lower' : `lower${i}`;
}

/**
 * Point every `lower*` link whose target is no longer the recorded tree at the
 * sibling directory that is (a rebuilt template's `old-*`). A link whose tree
 * cannot be found is left as it is: identities are a hint (a device number can
 * change across reboots), and the path still holds that template.
 * Returns the links it changed.
 */
export async function relinkMovedLayers(sandboxDir: string): Promise<string[]> {
  let wanted: string[];
  try {
    wanted = (await fsp.readFile(path.join(sandboxDir, LOWER_ID_FILE), 'utf8')).split('\n').filter(Boolean);
  } catch {
    return [];
  }
  const changed: string[] = [];
  for (const [i, want] of wanted.entries()) {
    const link = path.join(sandboxDir, linkName(i));
    const target = await fsp.readlink(link).catch(() => null);
    if (target === null) continue;
    const now = await fsp.stat(target).then((st) => `${st.dev}:${st.ino}`, () => null);
    if (now === want) continue;
    const parent = path.dirname(target);
    const siblings = await fsp.readdir(parent).catch(() => [] as string[]);
    for (const name of siblings) {
      const candidate = path.join(parent, name);
      const id = await fsp.stat(candidate).then((st) => (st.isDirectory() ? `${st.dev}:${st.ino}` : null), () => null);
      if (id !== want) continue;
      // A new link under a temporary name, renamed over the old one: the link is never missing.
      const tmp = `${link}.new`;
      await fsp.rm(tmp, { force: true });
      await fsp.symlink(candidate, tmp);
      await fsp.rename(tmp, link);
      changed.push(linkName(i));
      break;
    }
  }
  return changed;
}
