/**
 * Tar archives and OCI image archives made in memory for template tests (no
 * registry, no docker): tarOf packs entries, tinyImage makes a docker-save
 * archive of a busybox-based image with a whiteout and an opaque directory.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import zlib from 'node:zlib';
import tar from 'tar-stream';

export interface Entry {
  name: string;
  body?: string | Buffer;
  type?: 'file' | 'directory' | 'symlink';
  linkname?: string;
  mode?: number;
  uid?: number;
  gid?: number;
}

export async function tarOf(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) {
    const type = e.type ?? 'file';
    const header = {
      name: e.name,
      type,
      mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      ...(e.linkname ? { linkname: e.linkname } : {}),
    };
    if (type === 'file') pack.entry(header, e.body ?? '');
    else pack.entry(header);
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export const sha = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** The pieces of the tiny image, for tests that repackage them (OCI layout). */
export interface TinyImage {
  layer1: Buffer;
  layer1gz: Buffer;
  layer2: Buffer;
  config: Buffer;
  dockerSave: Buffer;
}

/**
 * A two-layer image: layer 1 has a static busybox, a user `app` (1234),
 * /data/{gone.txt,kept.txt} and /keep/{old1,old2}; layer 2 deletes
 * /data/gone.txt (whiteout) and replaces /keep with just `new` (opaque).
 * Its config sets PATH, GREETING, WorkingDir /data and User app.
 */
export async function tinyImage(): Promise<TinyImage> {
  const bb = fs.readFileSync('/usr/bin/busybox');
  const layer1 = await tarOf([
    { name: 'bin', type: 'directory' },
    { name: 'bin/busybox', body: bb, mode: 0o755 },
    ...['sh', 'ls', 'cat', 'id', 'pwd', 'echo', 'stat'].map((n) => ({ name: `bin/${n}`, type: 'symlink' as const, linkname: 'busybox' })),
    { name: 'etc', type: 'directory' },
    { name: 'etc/passwd', body: 'root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234:app:/home/app:/bin/sh\n' },
    { name: 'etc/group', body: 'root:x:0:\napp:x:1234:\n' },
    { name: 'data', type: 'directory', uid: 1234, gid: 1234 },
    { name: 'data/gone.txt', body: 'deleted later\n' },
    { name: 'data/kept.txt', body: 'kept\n', uid: 1234, gid: 1234 },
    { name: 'keep', type: 'directory' },
    { name: 'keep/old1', body: 'old\n' },
    { name: 'keep/old2', body: 'old\n' },
  ]);
  const layer2 = await tarOf([
    { name: 'data/.wh.gone.txt', body: '' },
    { name: 'keep', type: 'directory' },
    { name: 'keep/.wh..wh..opq', body: '' },
    { name: 'keep/new', body: 'new\n' },
  ]);
  const layer1gz = zlib.gzipSync(layer1);
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Env: ['PATH=/bin', 'GREETING=from the image'], WorkingDir: '/data', User: 'app', Cmd: ['/bin/sh', '-c', 'echo hi'] },
      rootfs: { type: 'layers', diff_ids: [sha(layer1), sha(layer2)] },
    }),
  );
  const dockerSave = await tarOf([
    { name: 'manifest.json', body: JSON.stringify([{ Config: 'config.json', RepoTags: ['example/tiny:1'], Layers: ['l1/layer.tar', 'l2/layer.tar'] }]) },
    { name: 'config.json', body: config },
    { name: 'l1', type: 'directory' },
    { name: 'l1/layer.tar', body: layer1gz },
    { name: 'l2', type: 'directory' },
    { name: 'l2/layer.tar', body: layer2 },
  ]);
  return { layer1, layer1gz, layer2, config, dockerSave };
}
