/**
 * The bench's floors (http-floor.ts, ws-floor.ts, upload-floor.ts) each run a bare server in a child process
 * of their own module: the parent forks it and learns its port; the child listens on 127.0.0.1 and ends with
 * its parent.
 */
import { fork, type ChildProcess } from 'node:child_process';
import type { Server } from 'node:net';
import { fileURLToPath } from 'node:url';

/** Fork the module at `moduleUrl` with `args`; resolves once its server listens. `what` names it in errors. */
export async function forkFloor(moduleUrl: string, args: string[], what: string): Promise<{ child: ChildProcess; port: number }> {
  const child = fork(fileURLToPath(moduleUrl), args, { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const port = await new Promise<number>((resolve, reject) => {
    child.once('message', (m) => resolve(Number(m)));
    child.once('exit', (code) => reject(new Error(`${what} exited with ${code}`)));
  });
  return { child, port };
}

/** In the child: listen on a free port of 127.0.0.1, tell the parent which, and exit when it goes. */
export function serveFloor(server: Server): void {
  server.listen(0, '127.0.0.1', () => process.send?.((server.address() as { port: number }).port));
  process.on('disconnect', () => process.exit(0));
}
