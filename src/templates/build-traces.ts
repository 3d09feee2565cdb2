/**
 * What a build sandbox leaves in /etc that is not part of the template it builds: the resolver the
 * network service wrote for a step with a network, and the line naming the build sandbox's own hostname
 * that its agent adds to /etc/hosts (agent/hosts.c; every sandbox made from the template gets its own).
 *
 * `layer` is a step's exported changes, a tree the build's code shaped: its `etc` may be a link to
 * anywhere on this host, so nothing here goes through a link.
 */
import { constants } from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

/** The end of the line the agent writes for the hostname (HOSTS_MARK in agent/hosts.h). */
export const SANDBOX_NAME_MARK = '# capsule: this sandbox';
/** Bigger files are the build's own business (HOSTS_MAX in agent/hosts.h). */
const HOSTS_MAX = 64 * 1024;

export async function removeBuildTraces(layer: string, opts: { resolver: boolean }): Promise<void> {
  const etc = path.join(layer, 'etc');
  const st = await fsp.lstat(etc).catch(() => null);
  if (!st?.isDirectory()) return;
  // unlink removes a link itself, never what it points to.
  if (opts.resolver) await fsp.unlink(path.join(etc, 'resolv.conf')).catch(() => undefined);
  await dropNameLine(path.join(etc, 'hosts'));
}

async function dropNameLine(file: string): Promise<void> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, constants.O_RDWR | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return; // none, or a link: not ours
  }
  try {
    const st = await fh.stat();
    if (!st.isFile() || st.size > HOSTS_MAX) return;
    const text = (await fh.readFile()).toString('utf8');
    const kept = text
      .split('\n')
      .filter((line) => !line.trimEnd().endsWith(SANDBOX_NAME_MARK))
      .join('\n');
    if (kept === text) return;
    await fh.truncate(0);
    await fh.write(kept, 0, 'utf8');
  } finally {
    await fh.close();
  }
}
