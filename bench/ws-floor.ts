/**
 * A floor for a WebSocket exec channel: like http-floor.ts, a bare server in another process that
 * forwards each message straight to the sandbox's agent, but over one long-lived WebSocket carrying
 * small JSON messages with ids (no HTTP request per exec).
 */
import http from 'node:http';
import { forkFloor, serveFloor } from './floor-process.js';
import WebSocket, { WebSocketServer } from 'ws';
import { connectAgent } from '../src/agent/client.js';
import { tuneJit } from '../src/jit.js';

export interface WsFloor {
  exec(argv: string[]): Promise<number>;
  close(): void;
}

export async function startWsFloor(socketPath: string): Promise<WsFloor> {
  const { child, port } = await forkFloor(import.meta.url, ['serve', socketPath], 'ws floor proxy');
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  let next = 1;
  const waiting = new Map<number, (code: number) => void>();
  ws.on('message', (data: Buffer) => {
    const m = JSON.parse(data.toString()) as { id: number; exitCode: number };
    const w = waiting.get(m.id);
    waiting.delete(m.id);
    w?.(m.exitCode);
  });
  return {
    exec(argv) {
      const id = next++;
      return new Promise<number>((resolve) => {
        waiting.set(id, resolve);
        ws.send(JSON.stringify({ id, argv }));
      });
    },
    close() {
      ws.terminate();
      child.kill();
    },
  };
}

async function serve(socketPath: string): Promise<void> {
  // The daemon's V8 setting (src/jit.ts), so that the floor stays a floor for the same code tier.
  tuneJit();
  const conn = await connectAgent(socketPath);
  const server = http.createServer((_req, res) => res.end());
  const wss = new WebSocketServer({ server, perMessageDeflate: false });
  wss.on('connection', (ws) => {
    ws.on('message', (data: Buffer) => {
      void (async () => {
        const { id, argv } = JSON.parse(data.toString()) as { id: number; argv: string[] };
        const p = await conn.exec({ argv, env: {}, stdin: false, holdReply: true });
        let stdout = '';
        p.on('stdout', (d) => (stdout += d.toString()));
        const st = await p.exited;
        ws.send(JSON.stringify({ id, pid: p.pid, exitCode: st.exitCode, stdout }));
      })();
    });
  });
  serveFloor(server);
}

if (process.argv[2] === 'serve' && process.argv[3]) void serve(process.argv[3]);
