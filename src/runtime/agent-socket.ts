/**
 * The agent's listening socket. The daemon binds and listens on it, hands the
 * listening fd to the container (fd 3), and then lets go of its own copy
 * without ever accepting: the agent is the only one that accepts.
 *
 * Node's net.Server unlinks a unix socket's path when it closes. So the socket
 * is bound under a private temporary name and renamed to its real path while
 * the runtime already holds the fd; closing the server then unlinks only the
 * (already gone) temporary name. Rename keeps the inode, and connect(2) finds a
 * unix socket by inode, so the agent keeps serving the real path.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { RuntimeError } from '../errors/index.js';

export interface PendingAgentSocket {
  /** The listening fd to pass to the runtime. */
  readonly fd: number;
  /**
   * Move the socket to its real path and close the daemon's copy of the fd.
   * Synchronous, so that no event-loop turn (and so no accept) happens in
   * between: call it right after spawn, when the runtime holds its own copy.
   */
  handOff(): void;
  /** Give up before hand-off (or after, a no-op): close and remove the temp name. */
  discard(): void;
}

/** Make `dir` exist as a root-owned 0700 directory. */
export async function ensurePrivateDir(dir: string): Promise<void> {
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await fsp.stat(dir);
  if ((st.mode & 0o777) !== 0o700) await fsp.chmod(dir, 0o700);
  if (process.getuid?.() === 0 && (st.uid !== 0 || st.gid !== 0)) await fsp.chown(dir, 0, 0);
}

export async function openAgentSocket(finalPath: string): Promise<PendingAgentSocket> {
  const dir = path.dirname(finalPath);
  await ensurePrivateDir(dir);
  await fsp.rm(finalPath, { force: true });
  const tmpPath = path.join(dir, `.${path.basename(finalPath)}.${process.pid}.${Math.random().toString(36).slice(2, 10)}`);
  const server = net.createServer();
  // Nothing may ever be accepted here: drop anything that would be (it cannot
  // happen while the temp name is private, but be explicit).
  server.on('connection', (s) => s.destroy());
  server.maxConnections = 0;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ path: tmpPath, backlog: 128 }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const handle = (server as unknown as { _handle?: { fd?: number } })._handle;
  const fd = handle?.fd;
  if (typeof fd !== 'number' || fd < 0) {
    server.close();
    await fsp.rm(tmpPath, { force: true });
    throw new RuntimeError('cannot get the listening fd of the agent socket (unsupported Node.js version?): use Node.js 20 or newer');
  }
  fs.chmodSync(tmpPath, 0o600);
  let state: 'open' | 'handed' | 'closed' = 'open';
  return {
    fd,
    handOff() {
      if (state !== 'open') throw new RuntimeError('agent socket already handed off');
      try {
        fs.renameSync(tmpPath, finalPath);
      } finally {
        state = 'handed';
        server.close(); // unlinks tmpPath only, which no longer exists
      }
    },
    discard() {
      if (state !== 'open') return;
      state = 'closed';
      server.close();
      fs.rmSync(tmpPath, { force: true });
    },
  };
}
