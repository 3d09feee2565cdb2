/**
 * Scenario 6 — networking, each figure next to a baseline from the same run:
 *  - create with egress (an allowlist: relay, routes, nftables, resolver file) vs the same create
 *    with none, interleaved;
 *  - HTTP download through the egress path (sandbox → relay → daemon gateway → server) vs the same
 *    download by the same client (busybox nc) on host loopback;
 *  - HTTP download through an exposed port (client on the host → daemon → relay → server inside) vs
 *    the same download from the same server program (busybox httpd) on host loopback;
 *  - memory per sandbox with networking on: host kernel + relay memory of N sandboxes with egress
 *    vs N without.
 * Its own daemon runs with a simulated internet (src/network/environment.ts): the "internet" is an
 * HTTP server on 127.0.0.40, and nothing outside 127.0.0.0/8 is ever dialled.
 */
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { Sandbox } from '../src/sdk/index.js';
import { interleave, linkRatios, row, type Scenario } from './context.js';
import { startDaemon } from './daemon.js';
import { run } from './proc.js';
import { now, sleep } from './stats.js';

const SITE = { name: 'bench.test', address: '203.0.113.40', loopback: '127.0.0.40' };

function meminfo(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}
function kernelBytes(): number {
  return ['SUnreclaim', 'KernelStack', 'PageTables', 'Percpu'].map(meminfo).filter(Number.isFinite).reduce((a, b) => a + b, 0);
}
/** Median of five readings 100 ms apart: the kernel frees namespaces asynchronously. */
async function settledKernel(): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < 5; i++) {
    xs.push(kernelBytes());
    await sleep(100);
  }
  return xs.sort((a, b) => a - b)[2]!;
}
function rssBytes(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}
function relayPids(): number[] {
  return fs
    .readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0')[0]!.endsWith('/capsule-netrelay');
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** GET a URL on 127.0.0.1 with a Host header; resolves with the body size. */
function download(port: number, p: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: p, headers, agent: false }, (res) => {
        let n = 0;
        res.on('data', (b: Buffer) => (n += b.length));
        res.on('end', () => (res.statusCode === 200 ? resolve(n) : reject(new Error(`status ${res.statusCode}`))));
        res.on('error', reject);
      })
      .on('error', reject);
  });
}

export const network: Scenario = async (ctx) => {
  const errors: string[] = [];
  const mb = ctx.quick ? 20 : 100;
  const size = mb * 1_000_000;
  const n = ctx.quick ? 3 : 10;
  const rate = (ms: number) => mb / (ms / 1000);
  const notes: string[] = [];

  // The "internet": a minimal HTTP/1.0 server that sends `bytes` bytes. Raw TCP with half-open
  // sockets, because clients like nc close their side after the request (node's http server would
  // then cut the response short).
  const chunk = Buffer.alloc(1 << 20, 97);
  const site = net.createServer({ allowHalfOpen: true }, (c) => {
    let head = '';
    c.on('error', () => undefined);
    const onData = (b: Buffer) => {
      head += b.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      c.removeListener('data', onData);
      const bytes = Number(/[?&]bytes=(\d+)/.exec(head)?.[1] ?? '0');
      c.write(`HTTP/1.0 200 OK\r\ncontent-length: ${bytes}\r\n\r\n`);
      let left = bytes;
      const pump = () => {
        while (left > 0) {
          const k = Math.min(left, chunk.length);
          left -= k;
          if (!c.write(k === chunk.length ? chunk : chunk.subarray(0, k))) return void c.once('drain', pump);
        }
        c.end();
      };
      pump();
    };
    c.on('data', onData);
  });
  await new Promise<void>((r) => site.listen(8080, SITE.loopback, () => r()));
  // The same server program as inside the sandbox, on the host, for the exposed-port baseline.
  const hostWww = path.join(ctx.daemon.dataDir, '..', 'bench-www');
  fs.mkdirSync(hostWww, { recursive: true });
  fs.writeFileSync(path.join(hostWww, 'big'), Buffer.alloc(size, 97));
  const hostHttpd = await run('busybox', ['httpd', '-p', '127.0.0.41:8081', '-h', hostWww]);
  if (hostHttpd.code !== 0) throw new Error(`busybox httpd on the host: ${hostHttpd.stderr}`);

  const dataDir = path.join(ctx.daemon.dataDir, '..', 'net-data');
  const d = await startDaemon(dataDir, {
    env: { CAPSULE_NET_TEST_INTERNET: JSON.stringify({ hosts: { [SITE.name]: SITE.address }, routes: { [SITE.address]: SITE.loopback } }) },
  });
  const conn = { apiUrl: d.url, ...(d.apiKey ? { apiKey: d.apiKey } : {}) };
  const daemonPort = Number(new URL(d.url).port);
  const allow = { egress: { allow: [SITE.name] } };
  try {
    // Untimed warm-up of both create paths.
    for (const network of [undefined, allow]) await (await Sandbox.create({ ...conn, template: 'busybox', ...(network ? { network } : {}) })).kill();

    // 1. create with egress vs without.
    const creates = await interleave(ctx.quick ? 5 : 20, [
      { name: 'create, egress allowlist', run: async () => { const t0 = now(); const s = await Sandbox.create({ ...conn, template: 'busybox', network: allow }); await s.commands.run('true'); const ms = now() - t0; await s.kill(); return ms; } },
      { name: 'create, no egress', run: async () => { const t0 = now(); const s = await Sandbox.create({ ...conn, template: 'busybox' }); await s.commands.run('true'); const ms = now() - t0; await s.kill(); return ms; } },
    ], errors);

    // 2. download through the egress path vs on host loopback, same client.
    const sbx = await Sandbox.create({ ...conn, template: 'busybox', network: allow, timeoutMs: 1800_000 });
    const look = await sbx.commands.run(`nslookup ${SITE.name}`);
    const ip = [...look.stdout.matchAll(/Address:\s*(198\.1[89]\.[0-9.]+)\s*$/gm)][0]?.[1];
    if (!ip) throw new Error(`no stand-in address for ${SITE.name}: ${look.stdout}`);
    const req = `printf 'GET /?bytes=${size} HTTP/1.0\\r\\nHost: ${SITE.name}\\r\\n\\r\\n'`;
    const egress = await interleave(n, [
      {
        name: 'egress',
        run: async () => {
          const t0 = now();
          const r = await sbx.commands.run(`${req} | nc ${ip} 8080 | wc -c`, { timeoutMs: 120_000 });
          const ms = now() - t0;
          if (Number(r.stdout.trim()) < size) throw new Error(`egress download got ${r.stdout.trim()} bytes`);
          return rate(ms);
        },
      },
      {
        name: 'host',
        run: async () => {
          const t0 = now();
          const r = await run('sh', ['-c', `${req} | busybox nc ${SITE.loopback} 8080 | wc -c`], { capture: true });
          const ms = now() - t0;
          if (Number(r.stdout.trim()) < size) throw new Error(`host download got ${r.stdout.trim()} bytes`);
          return rate(ms);
        },
      },
    ], errors);

    // 3. an exposed port vs the same server on host loopback.
    await sbx.commands.run(`mkdir -p /www && head -c ${size} /dev/zero | tr '\\0' a > /www/big && httpd -p 8081 -h /www`);
    const access = await sbx.network.port(8081);
    const ports = await interleave(n, [
      {
        name: 'exposed',
        run: async () => {
          const t0 = now();
          const got = await download(daemonPort, `/v1/sandboxes/${sbx.id}/ports/8081/big`, { 'x-capsule-port-token': access.token });
          if (got !== size) throw new Error(`exposed port download got ${got} bytes`);
          return rate(now() - t0);
        },
      },
      {
        name: 'host',
        run: async () => {
          const t0 = now();
          const got = await new Promise<number>((resolve, reject) => {
            http.get({ host: '127.0.0.41', port: 8081, path: '/big', agent: false }, (res) => {
              let k = 0;
              res.on('data', (b: Buffer) => (k += b.length));
              res.on('end', () => resolve(k));
            }).on('error', reject);
          });
          if (got !== size) throw new Error(`host download got ${got} bytes`);
          return rate(now() - t0);
        },
      },
    ], errors);
    await sbx.kill();

    // 4. memory of N sandboxes with networking vs without.
    const count = ctx.quick ? 5 : 40;
    const memory = async (network: typeof allow | undefined) => {
      await sleep(1000);
      const k0 = await settledKernel();
      const relays0 = new Set(relayPids());
      const list: Sandbox[] = [];
      for (let i = 0; i < count; i++) list.push(await Sandbox.create({ ...conn, template: 'busybox', ...(network ? { network } : {}) }));
      await sleep(500);
      const relayRss = relayPids().filter((p) => !relays0.has(p)).reduce((a, p) => a + rssBytes(p), 0);
      const kernel = (await settledKernel()) - k0;
      await Promise.all(list.map((s) => s.kill()));
      return { perSandboxMiB: (kernel + relayRss) / count / 1048576, relayMiB: relayRss / count / 1048576 };
    };
    // Twice each, alternating, so drift on a shared machine hits both.
    const on1 = await memory(allow);
    const off1 = await memory(undefined);
    const on2 = await memory(allow);
    const off2 = await memory(undefined);
    const avg = (a: typeof on1, b: typeof on1) => ({ perSandboxMiB: (a.perSandboxMiB + b.perSandboxMiB) / 2, relayMiB: (a.relayMiB + b.relayMiB) / 2 });
    const memOn = avg(on1, on2);
    const memOff = avg(off1, off2);
    notes.push(
      `memory: ${count} sandboxes each; kernel memory (SUnreclaim, stacks, page tables) plus relay RSS, per sandbox: ${memOn.perSandboxMiB.toFixed(2)} MiB with egress (relay RSS ${memOn.relayMiB.toFixed(2)} MiB of it) vs ${memOff.perSandboxMiB.toFixed(2)} MiB without.`,
      `downloads: ${mb} MB over HTTP/1.0; egress client busybox nc inside the sandbox (the host baseline runs the same nc on host loopback); exposed port: node http client on the host to busybox httpd inside (baseline: the same httpd on host loopback).`,
    );

    const rows = [
      row('create + first command, egress allowlist', 'capsule', 'ms', creates.get('create, egress allowlist')!, { vs: 'create + first command, no egress' }),
      row('create + first command, no egress', 'baseline', 'ms', creates.get('create, no egress')!),
      row('HTTP download through egress', 'capsule', 'MB/s', egress.get('egress')!, { vs: 'HTTP download, host loopback (nc)' }),
      row('HTTP download, host loopback (nc)', 'baseline', 'MB/s', egress.get('host')!),
      row('HTTP download through an exposed port', 'capsule', 'MB/s', ports.get('exposed')!, { vs: 'HTTP download, host loopback (httpd)' }),
      row('HTTP download, host loopback (httpd)', 'baseline', 'MB/s', ports.get('host')!),
      row('memory per sandbox, egress on', 'capsule', 'MiB', [memOn.perSandboxMiB], { vs: 'memory per sandbox, egress off', extra: { relayMiB: Number(memOn.relayMiB.toFixed(3)) } }),
      row('memory per sandbox, egress off', 'baseline', 'MiB', [memOff.perSandboxMiB]),
      row('relay RSS per sandbox', 'capsule', 'MiB', [memOn.relayMiB]),
    ];
    linkRatios(rows);
    return { name: 'network', title: `Networking (${mb} MB transfers, ${n} rounds)`, rows, notes, errors };
  } finally {
    await d.stop();
    await new Promise((r) => site.close(r));
    const pid = Number((await run('sh', ['-c', "ps -eo pid,args | awk '/busybox httpd -p 127.0.0.41:8081/ && !/awk/ {print $1}'"], { capture: true })).stdout.trim().split('\n')[0]);
    if (pid > 0) process.kill(pid, 'SIGTERM');
    fs.rmSync(hostWww, { recursive: true, force: true });
  }
};
