/**
 * The daemon's gateway: the unix socket where every sandbox's relay hands over
 * each outbound TCP connection and its DNS datagrams (wire format in
 * native/capsule-netrelay.c). It reads the hand-over line, answers DNS (over
 * the relay's datagram channel, and over TCP to the resolver address) with
 * dns.ts, bounds floods per sandbox, and gives each connection to flow.ts.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { CompiledPolicy, Destination, HostFacts } from './policy.js';
import type { StandIns } from './names.js';
import { answerDns } from './dns.js';
import type { NetworkEnvironment } from './environment.js';
import type { EgressLedger } from './ledger.js';
import { handleFlow } from './flow.js';
import { takeAttempt } from './limits.js';

export interface Logger {
  info(obj: unknown, msg?: string): void;
  warn(obj: unknown, msg?: string): void;
  error(obj: unknown, msg?: string): void;
}

/** What the gateway needs to know of one sandbox with networking. */
export interface SandboxNet {
  id: string;
  policy: CompiledPolicy;
  names: StandIns;
  flows: Set<Flow>;
}

export interface Flow {
  dest: Destination;
  /** Close it when the current policy no longer allows it. */
  recheck(policy: CompiledPolicy, host: HostFacts): void;
}

export interface GatewayDeps {
  lookup(id: string): SandboxNet | undefined;
  env: NetworkEnvironment;
  ledger: EgressLedger;
  host(): HostFacts;
  log: Logger;
}

/** The hand-over line is short; a longer one is not from our relay. */
const HEADER_LIMIT = 512;

export class Gateway {
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly socketPath: string, private readonly deps: GatewayDeps) {}

  async listen(): Promise<void> {
    fs.mkdirSync(path.dirname(this.socketPath), { recursive: true, mode: 0o700 });
    fs.chmodSync(path.dirname(this.socketPath), 0o700);
    fs.rmSync(this.socketPath, { force: true });
    const server = net.createServer({ allowHalfOpen: true, noDelay: true } as net.ServerOpts, (s) => this.accept(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.socketPath, () => resolve());
    });
    fs.chmodSync(this.socketPath, 0o600);
    this.server = server;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    this.server = null;
  }

  private accept(s: net.Socket): void {
    this.sockets.add(s);
    s.once('close', () => this.sockets.delete(s));
    s.on('error', () => undefined);
    let head = Buffer.alloc(0);
    const onData = (b: Buffer) => {
      head = Buffer.concat([head, b]);
      const nl = head.indexOf(10);
      if (nl < 0) {
        if (head.length > HEADER_LIMIT) s.destroy();
        return;
      }
      s.removeListener('data', onData);
      s.pause();
      const line = head.subarray(0, nl).toString('latin1');
      const rest = head.subarray(nl + 1);
      const f = line.split(' ');
      if (f[0] === 'FLOW' && f[1] === '1' && f.length === 9) {
        void handleFlow(this.deps, (c, sbx, first) => this.dnsOverTcp(c, sbx, first), s, f, rest).catch((err: unknown) => {
          this.deps.log.error({ err }, 'gateway: flow failed');
          s.destroy();
        });
      } else if (f[0] === 'DNS' && f[1] === '1' && f.length === 3) {
        this.dnsChannel(s, f[2]!, rest);
      } else {
        this.deps.log.warn({ line: line.slice(0, 100) }, 'gateway: unknown hand-over');
        s.destroy();
      }
    };
    s.on('data', onData);
  }

  private dnsChannel(s: net.Socket, id: string, first: Buffer): void {
    const sbx = this.deps.lookup(id);
    if (!sbx) {
      s.destroy();
      return;
    }
    let buf = first;
    const ctx = { sandboxId: id, policy: () => this.deps.lookup(id)?.policy ?? sbx.policy, names: sbx.names, env: this.deps.env, ledger: this.deps.ledger };
    const drain = () => {
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (len < 19 || len > 19 + 4096) {
          s.destroy();
          return;
        }
        if (buf.length < 2 + len) return;
        const addr = Buffer.from(buf.subarray(2, 21));
        const msg = Buffer.from(buf.subarray(21, 2 + len));
        buf = buf.subarray(2 + len);
        // Over the rate: dropped unanswered, as a congested resolver would (the client retries).
        if (!takeAttempt(sbx)) continue;
        void answerDns(msg, ctx).then(
          (answer) => {
            if (!answer || s.destroyed) return;
            const frame = Buffer.alloc(2 + 19 + answer.length);
            frame.writeUInt16BE(19 + answer.length, 0);
            addr.copy(frame, 2);
            answer.copy(frame, 21);
            s.write(frame);
          },
          (err: unknown) => this.deps.log.warn({ err, id }, 'gateway: DNS answer failed'),
        );
      }
    };
    s.on('data', (b: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, b]) : b;
      drain();
    });
    s.resume();
    drain();
  }

  /** DNS over TCP to the resolver address: two-byte length prefix per message (RFC 1035 4.2.2). */
  private dnsOverTcp(s: net.Socket, sbx: SandboxNet, first: Buffer): void {
    let buf = first;
    const ctx = { sandboxId: sbx.id, policy: () => this.deps.lookup(sbx.id)?.policy ?? sbx.policy, names: sbx.names, env: this.deps.env, ledger: this.deps.ledger };
    const drain = () => {
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const msg = Buffer.from(buf.subarray(2, 2 + buf.readUInt16BE(0)));
        buf = buf.subarray(2 + msg.length);
        if (!takeAttempt(sbx)) continue;
        void answerDns(msg, ctx).then((a) => {
          if (!a || s.destroyed) return;
          const len = Buffer.alloc(2);
          len.writeUInt16BE(a.length);
          s.write(Buffer.concat([len, a]));
        });
      }
      if (buf.length > 70_000) s.destroy();
    };
    s.on('data', (b: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, b]) : b;
      drain();
    });
    s.on('end', () => s.end());
    s.resume();
    drain();
  }
}
