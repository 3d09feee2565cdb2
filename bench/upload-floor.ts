/**
 * Floors for the file write row: what an upload costs on this machine before
 * any of Capsule's own work. A child process runs a bare node:http server (no
 * auth, no validation, no state, no framework) that either relays the PUT body
 * straight into the sandbox's agent (`relay`: the same agent client and WRITE
 * channel the daemon uses, so the same bytes, copies and processes) or reads it
 * and drops it (`discard`: only the TCP transfer into a Node process). The
 * client sends with the SDK's own transport (transport.sendRequest, what
 * files.write uses for a buffer body).
 *
 * Next to `crun exec cat` these rows tell apart what the SDK row cannot: how much
 * of the gap is Capsule's code (sdk against relay), how much the relay through
 * the agent (relay against discard), and how much the TCP hop itself (discard
 * against the pipe into cat).
 */
import http from 'node:http';
import { forkFloor, serveFloor } from './floor-process.js';
import { connectAgent } from '../src/agent/client.js';
import { tuneJit } from '../src/jit.js';
import { readAll, sendRequest } from '../src/sdk/transport.js';

export interface UploadFloor {
  /** PUT `data`; with the relay, into `path` inside the sandbox. Resolves with the size the server took. */
  put(path: string, data: Uint8Array): Promise<number>;
  close(): void;
}

/** Start the bare server; `socketPath` is the sandbox agent's, for the relay. */
export async function startUploadFloor(mode: 'relay' | 'discard', socketPath: string): Promise<UploadFloor> {
  const { child, port } = await forkFloor(import.meta.url, ['serve', mode, socketPath], `upload floor (${mode})`);
  return {
    async put(path, data) {
      const url = new URL(`http://127.0.0.1:${port}/?path=${encodeURIComponent(path)}`);
      const res = await sendRequest(url, { method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body: data, signal: new AbortController().signal });
      const text = Buffer.from(await readAll(res)).toString();
      if (res.status !== 200) throw new Error(`upload floor (${mode}) answered ${res.status}: ${text.slice(0, 300)}`);
      return (JSON.parse(text) as { size: number }).size;
    },
    close() {
      child.kill();
    },
  };
}

async function serve(mode: string, socketPath: string): Promise<void> {
  // The daemon's V8 setting (src/jit.ts), so that the floor runs the same code tier.
  tuneJit();
  const conn = mode === 'relay' ? await connectAgent(socketPath) : undefined;
  const server = http.createServer((req, res) => {
    const answer = (status: number, body: string) => {
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    if (!conn) {
      let size = 0;
      req.on('data', (d: Buffer) => (size += d.length));
      req.on('end', () => answer(200, JSON.stringify({ size })));
      return;
    }
    const path = new URL(req.url ?? '/', 'http://x').searchParams.get('path') ?? '/tmp/upload-floor.bin';
    conn.writeFile(path, req).then(
      (r) => answer(200, JSON.stringify({ size: r.size })),
      (e: unknown) => answer(500, JSON.stringify({ error: String(e) })),
    );
  });
  serveFloor(server);
}

if (process.argv[2] === 'serve' && process.argv[3] && process.argv[4]) void serve(process.argv[3], process.argv[4]);
