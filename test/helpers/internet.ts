/**
 * A small "internet" on host loopback addresses for networking tests: HTTP,
 * HTTPS (self-signed) and TCP echo servers on 127.0.0.x, named through the
 * daemon's simulated-internet setting (CAPSULE_NET_TEST_INTERNET). Sandboxes see
 * public-looking TEST-NET-3 addresses (203.0.113.0/24); the daemon dials only
 * the loopback address each one stands for, and nothing else. Every server
 * counts what reaches it, so a test can prove that a refused attempt never
 * arrived.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import dgram from 'node:dgram';

export interface Site {
  name: string;
  /** What sandboxes dial (a TEST-NET-3 address). */
  address: string;
  /** Where the server really is (host loopback). */
  loopback: string;
  httpPort: number;
  httpsPort: number;
  echoPort: number;
  /** Requests and connections that reached this site's servers. */
  hits: { http: number; https: number; tlsConnections: number; echo: number; hosts: string[] };
}

export interface Internet {
  sites: Record<string, Site>;
  /** PEM of the sites' self-signed certificate (one for every name). */
  cert: string;
  /** The daemon setting (JSON). */
  env: string;
  /** A UDP "outside resolver" on host loopback (127.0.0.53:53 stands for 203.0.113.53:53): counts datagrams. */
  udpHits: () => number;
  close(): Promise<void>;
}

function listen(server: net.Server | http.Server, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve((server.address() as net.AddressInfo).port));
  });
}

function selfSigned(names: string[]): { key: Buffer; cert: Buffer } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-tls-'));
  try {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=${names[0]}`,
      '-addext', `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}`,
      '-keyout', path.join(dir, 'k.pem'), '-out', path.join(dir, 'c.pem'),
    ], { stdio: 'ignore' });
    return { key: fs.readFileSync(path.join(dir, 'k.pem')), cert: fs.readFileSync(path.join(dir, 'c.pem')) };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Start one site per name: names[i] lives at 203.0.113.(10+i), served from 127.0.0.(2+i). */
export async function startInternet(names: string[], extraRoutes: Record<string, string> = {}): Promise<Internet> {
  const tls = selfSigned(names);
  const servers: net.Server[] = [];
  const sockets = new Set<net.Socket>();
  const sites: Record<string, Site> = {};
  for (const [i, name] of names.entries()) {
    const loopback = `127.0.0.${2 + i}`;
    const hits = { http: 0, https: 0, tlsConnections: 0, echo: 0, hosts: [] as string[] };
    const handler = (kind: 'http' | 'https') => (req: http.IncomingMessage, res: http.ServerResponse) => {
      hits[kind]++;
      hits.hosts.push(String(req.headers.host));
      const size = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('bytes') ?? '0');
      if (size > 0) {
        res.writeHead(200, { 'content-length': size });
        const chunk = Buffer.alloc(Math.min(size, 1 << 20), 97);
        let left = size;
        const pump = () => {
          while (left > 0) {
            const n = Math.min(left, chunk.length);
            left -= n;
            if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return void res.once('drain', pump);
          }
          res.end();
        };
        pump();
        return;
      }
      let body = 0;
      req.on('data', (b: Buffer) => (body += b.length));
      req.on('end', () => res.end(`hello from ${name} over ${kind} (${body} bytes received)\n`));
    };
    const h = http.createServer(handler('http'));
    const s = https.createServer({ key: tls.key, cert: tls.cert }, handler('https'));
    s.on('connection', () => hits.tlsConnections++);
    const e = net.createServer((c) => {
      hits.echo++;
      c.pipe(c);
    });
    for (const srv of [h, s, e]) {
      srv.on('connection', (c: net.Socket) => {
        sockets.add(c);
        c.once('close', () => sockets.delete(c));
      });
      servers.push(srv);
    }
    sites[name] = {
      name,
      address: `203.0.113.${10 + i}`,
      loopback,
      httpPort: await listen(h, loopback),
      httpsPort: await listen(s, loopback),
      echoPort: await listen(e, loopback),
      hits,
    };
  }
  let udp = 0;
  const resolver = dgram.createSocket('udp4');
  resolver.on('message', () => udp++);
  // A bind that fails (another test's resolver, or a local DNS cache on 127.0.0.53:53) must fail the test:
  // without an error listener the socket never calls back, and the other servers keep the file alive forever.
  await new Promise<void>((resolve, reject) => {
    resolver.once('error', (e) => {
      for (const srv of servers) srv.close();
      reject(new Error(`the test resolver cannot bind 127.0.0.53:53: ${e.message}`));
    });
    resolver.bind(53, '127.0.0.53', () => resolve());
  });
  const env = JSON.stringify({
    hosts: Object.fromEntries(Object.values(sites).map((s) => [s.name, s.address])),
    routes: {
      ...Object.fromEntries(Object.values(sites).map((s) => [s.address, s.loopback])),
      '203.0.113.53': '127.0.0.53',
      ...extraRoutes,
    },
  });
  return {
    sites,
    cert: tls.cert.toString(),
    env,
    udpHits: () => udp,
    async close() {
      for (const c of sockets) c.destroy();
      await Promise.all(servers.map((s) => new Promise((r) => s.close(() => r(undefined)))));
      resolver.close();
    },
  };
}
