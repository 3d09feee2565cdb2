/**
 * The daemon's gateway: the unix socket where every sandbox's relay hands over
 * each outbound TCP connection and its DNS datagrams (wire format in
 * native/capsule-netrelay.c). For a connection it:
 *
 *  1. learns the destination: a stand-in address means the name the sandbox
 *     resolved (names.ts); the resolver address on port 53 is DNS over TCP;
 *  2. decides with the sandbox's policy (policy.ts) on the real address it is
 *     about to dial, and refuses by closing the connection;
 *  3. dials (environment.ts), then holds the sandbox's first bytes until the
 *     TLS SNI or HTTP Host is read (sniff.ts) and decides again with it;
 *  4. copies bytes both ways, counting them for the ledger (ledger.ts).
 *
 * Open connections stay registered with their sandbox, so a policy change
 * closes the ones it no longer allows.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { evaluate, type CompiledPolicy, type Destination, type HostFacts, type Verdict } from './policy.js';
import { RESOLVER_ADDRESS, inStandInRange, type StandIns } from './names.js';
import { answerDns } from './dns.js';
import type { NetworkEnvironment } from './environment.js';
import type { EgressLedger } from './ledger.js';
import { sniff, SNIFF_LIMIT } from './sniff.js';

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

/** Open connections one sandbox may have through the gateway (each holds two of the daemon's descriptors). */
export const MAX_FLOWS_PER_SANDBOX = 256;
/** New connections plus DNS queries per second and sandbox, with bursts up to this many (each is a ledger write). */
export const ATTEMPTS_PER_SECOND = 200;

/** A token bucket per sandbox: a flood of attempts costs the daemon no more than this rate. */
const buckets = new WeakMap<SandboxNet, { tokens: number; at: number }>();
export function takeAttempt(sbx: SandboxNet, now = performance.now()): boolean {
  const b = buckets.get(sbx) ?? { tokens: ATTEMPTS_PER_SECOND, at: now };
  b.tokens = Math.min(ATTEMPTS_PER_SECOND, b.tokens + ((now - b.at) / 1000) * ATTEMPTS_PER_SECOND);
  b.at = now;
  buckets.set(sbx, b);
  if (b.tokens < 1) return false;
  b.tokens -= 1;
  return true;
}

/** Longest wait for the first bytes that may carry a name (a server-first protocol sends none: its bytes flow meanwhile). */
const SNIFF_TIMEOUT_MS = 5_000;
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
        void this.flow(s, f, rest).catch((err: unknown) => {
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

  private async flow(client: net.Socket, f: string[], first: Buffer): Promise<void> {
    const [, , id, dstIp, dstPortText, , , pidText, comm] = f as [string, string, string, string, string, string, string, string, string];
    const sbx = this.deps.lookup(id);
    const dstPort = Number(dstPortText);
    if (!sbx || !Number.isInteger(dstPort)) {
      client.destroy();
      return;
    }
    const at = Date.now();
    const started = performance.now();
    const pid = Number(pidText) > 0 ? Number(pidText) : null;
    const command = comm && comm !== '-' ? comm.slice(0, 64) : null;
    const { ledger } = this.deps;
    const base = { sandboxId: id, at, protocol: 'tcp' as const, port: dstPort, pid, command };
    const refuse = (name: string | null, address: string | null, v: Pick<Verdict, 'rule' | 'reason'>) => {
      ledger.add({ ...base, name, address, verdict: 'refused', rule: v.rule, reason: v.reason }, false);
      client.destroy();
    };

    if (dstIp === RESOLVER_ADDRESS && dstPort === 53) return this.dnsOverTcp(client, sbx, first);
    // Floods are cut before they cost a lookup, a dial or a ledger write each.
    if (!takeAttempt(sbx)) {
      client.destroy();
      return;
    }
    if (sbx.flows.size >= MAX_FLOWS_PER_SANDBOX) {
      return refuse(null, dstIp, { rule: 'too-many', reason: `the sandbox already has ${MAX_FLOWS_PER_SANDBOX} open connections` });
    }
    if (dstIp.startsWith('127.') || dstIp === '::1') {
      return refuse(null, dstIp, { rule: 'loopback', reason: "a direct connection to the relay's own port" });
    }
    let name: string | undefined;
    let candidates = [dstIp];
    if (inStandInRange(dstIp)) {
      name = sbx.names.nameOf(dstIp);
      if (!name) return refuse(null, dstIp, { rule: 'stale', reason: `${dstIp} is not an address this sandbox's DNS gave out (or it was forgotten)` });
      candidates = await this.deps.env.resolve(name);
      if (candidates.length === 0) return refuse(name, null, { rule: 'nxdomain', reason: `${name} no longer resolves` });
    }
    // The first real address the policy allows; when none, the first one's refusal is the reason given.
    const host = this.deps.host();
    let verdict: Verdict | null = null;
    let address = candidates[0]!;
    for (const c of candidates) {
      const v = evaluate(sbx.policy, { ip: c, port: dstPort, name, dialed: this.deps.env.target(c) ?? undefined }, host);
      verdict ??= v;
      if (v.allowed) {
        verdict = v;
        address = c;
        break;
      }
    }
    if (!verdict!.allowed) return refuse(name ?? null, address, verdict!);
    const entry = ledger.add({ ...base, name: name ?? null, address, verdict: 'allowed', rule: verdict!.rule, reason: verdict!.reason }, true);

    let up = 0;
    let down = 0;
    let closedWith: { rule: string; reason: string } | undefined;
    let dialFailure: string | undefined;
    let claimedName: string | undefined;
    let upstream: net.Socket | null = null;
    /** Stop: the flow was refused or aborted, or the sandbox side is gone. */
    let finished = false;
    let clientClosed = false;
    let upstreamClosed = false;
    let recorded = false;
    const dest: Destination = { ip: address, port: dstPort, name, dialed: this.deps.env.target(address) ?? undefined };
    const record = () => {
      if (recorded) return;
      recorded = true;
      sbx.flows.delete(flowRef);
      ledger.close(entry, id, {
        bytesUp: up,
        bytesDown: down,
        durationMs: performance.now() - started,
        ...(closedWith ? { verdict: 'refused' as const, ...closedWith } : {}),
        ...(dialFailure ? { reason: `${verdict!.reason}; the connection failed: ${dialFailure}` } : {}),
        ...(claimedName && !name ? { name: claimedName } : {}),
      });
    };
    const maybeRecord = () => {
      if (clientClosed && (upstream === null || upstreamClosed)) record();
    };
    /** Refused on the way (SNI, a policy change): both sides cut at once. */
    const abort = (why: { rule: string; reason: string }) => {
      closedWith = why;
      finished = true;
      client.destroy();
      upstream?.destroy();
    };
    const flowRef: Flow = {
      dest,
      recheck: (policy, h) => {
        const v = evaluate(policy, dest, h);
        if (!v.allowed) abort({ rule: v.rule, reason: `policy changed: ${v.reason}` });
      },
    };
    sbx.flows.add(flowRef);
    // The sandbox side went away: what it sent still reaches the server (end, then close once flushed).
    client.once('close', () => {
      clientClosed = true;
      finished = true;
      const u = upstream;
      if (u && !u.destroyed) {
        u.end();
        u.once('finish', () => u.destroy());
        setTimeout(() => u.destroy(), 10_000).unref();
      }
      maybeRecord();
    });

    // Most clients speak first (TLS, HTTP): read their opening before dialling, so a name the policy
    // refuses never even opens a connection. A server-first protocol sends nothing: dial after a moment.
    const opening = await collectOpening(client, first);
    if (finished) return;
    if (opening.sniff?.done && opening.sniff.name) {
      claimedName = opening.sniff.name;
      dest.claimed = opening.sniff.name;
      const v = evaluate(this.deps.lookup(id)?.policy ?? sbx.policy, dest, host);
      if (!v.allowed) return abort({ rule: v.rule, reason: v.reason });
    }
    let dialled: net.Socket;
    try {
      dialled = await this.deps.env.dial(address, dstPort);
    } catch (err) {
      dialFailure = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      finished = true;
      client.destroy();
      return;
    }
    if (finished) {
      dialled.destroy();
      return;
    }
    upstream = dialled;
    const up$ = dialled;
    // The server side went away: what it sent still reaches the sandbox (end, then the relay closes).
    up$.once('close', () => {
      upstreamClosed = true;
      if (!client.destroyed) {
        client.end();
        setTimeout(() => client.destroy(), 30_000).unref();
      }
      maybeRecord();
    });
    up$.on('error', () => undefined);
    up$.on('data', (b: Buffer) => {
      down += b.length;
      if (!client.write(b)) up$.pause();
    });
    client.on('drain', () => up$.resume());
    up$.on('end', () => client.end());

    let held = opening.held;
    let decided = false;
    let timer: NodeJS.Timeout | undefined;
    const release = () => {
      if (decided || finished) return;
      decided = true;
      if (timer) clearTimeout(timer);
      client.removeListener('data', onHeld);
      if (held.length) {
        up += held.length;
        up$.write(held);
      }
      client.on('data', (b: Buffer) => {
        up += b.length;
        if (!up$.write(b)) client.pause();
      });
      up$.on('drain', () => client.resume());
      if (opening.ended || client.readableEnded) up$.end();
      else client.on('end', () => up$.end());
      client.resume();
    };
    // Bytes that come only after the server spoke are judged the same way before they are forwarded.
    const judge = () => {
      const r = sniff(held);
      if (!r.done && held.length < SNIFF_LIMIT) return;
      if (r.done && r.name) {
        claimedName = r.name;
        dest.claimed = r.name;
        const v = evaluate(this.deps.lookup(id)?.policy ?? sbx.policy, dest, host);
        if (!v.allowed) {
          if (timer) clearTimeout(timer);
          return abort({ rule: v.rule, reason: v.reason });
        }
      }
      release();
    };
    const onHeld = (b: Buffer) => {
      held = Buffer.concat([held, b]);
      judge();
    };
    if (opening.sniff?.done || opening.ended || held.length >= SNIFF_LIMIT) return release();
    timer = setTimeout(release, SNIFF_TIMEOUT_MS);
    client.on('data', onHeld);
    client.once('end', () => {
      if (decided) return;
      release();
      up$.end();
    });
    client.resume();
    if (held.length) judge();
  }
}

/** How long a silent client is given before the server is dialled anyway (server-first protocols). */
const QUIET_MS = 250;

/**
 * The sandbox's opening bytes: until they name a host (or say they never will), the sniff limit,
 * SNIFF_TIMEOUT_MS, the end of the client's stream, or QUIET_MS without a first byte.
 */
function collectOpening(client: net.Socket, first: Buffer): Promise<{ held: Buffer; sniff: ReturnType<typeof sniff> | null; ended: boolean }> {
  return new Promise((resolve) => {
    let held = first;
    let ended = false;
    let quiet: NodeJS.Timeout | undefined;
    const done = () => {
      clearTimeout(quiet);
      clearTimeout(total);
      client.removeListener('data', onData);
      client.removeListener('end', onEnd);
      client.removeListener('close', onEnd);
      client.pause();
      resolve({ held, sniff: held.length ? sniff(held) : null, ended });
    };
    const check = () => {
      if (held.length === 0) return;
      clearTimeout(quiet);
      const r = sniff(held);
      if (r.done || held.length >= SNIFF_LIMIT) done();
    };
    const onData = (b: Buffer) => {
      held = held.length ? Buffer.concat([held, b]) : b;
      check();
    };
    const onEnd = () => {
      ended = true;
      done();
    };
    const total = setTimeout(done, SNIFF_TIMEOUT_MS);
    if (held.length === 0) quiet = setTimeout(done, QUIET_MS);
    client.on('data', onData);
    client.once('end', onEnd);
    client.once('close', onEnd);
    client.resume();
    check();
  });
}
