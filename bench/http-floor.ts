/**
 * A floor for the exec row: the least any HTTP front could add to the agent's
 * own round trip on this machine. A child process runs a bare node:http server
 * that forwards each request straight to the sandbox's agent (no auth, no
 * validation, no state, no framework), and the SDK's own plain HTTP/1.1 client
 * path (transport.plainRequest, what every small SDK call uses) calls it.
 * The SDK's row next to it shows what Capsule's own HTTP, daemon and SDK work
 * costs on top of that floor.
 */
import http from 'node:http';
import { forkFloor, serveFloor } from './floor-process.js';
import { connectAgent } from '../src/agent/client.js';
import { tuneJit } from '../src/jit.js';
import { plainOrigin, plainRequest } from '../src/sdk/transport.js';

export interface HttpFloor {
  /** One exec of argv through the bare proxy; resolves with the exit code. */
  exec(argv: string[]): Promise<number>;
  close(): void;
}

/** Start the bare proxy in front of the agent listening at `socketPath`. */
export async function startHttpFloor(socketPath: string): Promise<HttpFloor> {
  const { child, port } = await forkFloor(import.meta.url, ['serve', socketPath], 'http floor proxy');
  const origin = plainOrigin(new URL(`http://127.0.0.1:${port}`))!;
  return {
    async exec(argv) {
      const answer = await plainRequest(origin, {
        method: 'POST',
        target: '/',
        headers: { 'content-type': 'application/json' },
        body: Buffer.from(JSON.stringify({ argv })),
        maxBody: 1 << 20,
      });
      if (!answer || answer.status !== 200) throw new Error(`http floor proxy answered ${answer?.status}`);
      return (JSON.parse(answer.body.toString()) as { exitCode: number }).exitCode;
    },
    close() {
      child.kill();
    },
  };
}

async function serve(socketPath: string): Promise<void> {
  // The daemon's V8 setting (src/jit.ts), so that the floor stays a floor for the same code tier.
  tuneJit();
  const conn = await connectAgent(socketPath);
  const server = http.createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      void (async () => {
        const { argv } = JSON.parse(Buffer.concat(parts).toString()) as { argv: string[] };
        const p = await conn.exec({ argv, env: {}, stdin: false, holdReply: true });
        let stdout = '';
        p.on('stdout', (d) => (stdout += d.toString()));
        const st = await p.exited;
        const body = JSON.stringify({ pid: p.pid, exitCode: st.exitCode, stdout });
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      })().catch((e: unknown) => {
        res.writeHead(500);
        res.end(String(e));
      });
    });
  });
  serveFloor(server);
}

if (process.argv[2] === 'serve' && process.argv[3]) void serve(process.argv[3]);
