/**
 * One outbound connection of a sandbox, from the gateway's hand-over to its ledger entry:
 *
 *  1. the destination: a stand-in address means the name the sandbox resolved
 *     (names.ts); loopback means someone dialled the relay itself;
 *  2. the decision with the sandbox's policy (policy.ts) on the real address about
 *     to be dialled; a refusal closes the connection;
 *  3. the sandbox's opening bytes are read (sniff.ts) before dialling, and the
 *     TLS SNI or HTTP Host in them decides again (no fronting, no raw-IP dodge);
 *  4. the dial (environment.ts), then bytes both ways, counted for the ledger (ledger.ts).
 *
 * The connection stays registered with its sandbox while open, so a policy change
 * closes it when no longer allowed. A side that closes never cuts what the other
 * side still has to deliver.
 */
import type net from 'node:net';
import { evaluate, type Destination, type Verdict } from './policy.js';
import { RESOLVER_ADDRESS, inStandInRange } from './names.js';
import type { Flow, GatewayDeps, SandboxNet } from './gateway.js';
import { MAX_FLOWS_PER_SANDBOX, takeAttempt } from './limits.js';
import { sniff, SNIFF_LIMIT } from './sniff.js';

/** Longest wait for the first bytes that may carry a name (a server-first protocol sends none: its bytes flow meanwhile). */
const SNIFF_TIMEOUT_MS = 5_000;

export async function handleFlow(deps: GatewayDeps, dnsOverTcp: (client: net.Socket, sbx: SandboxNet, first: Buffer) => void, client: net.Socket, f: string[], first: Buffer): Promise<void> {
  const [, , id, dstIp, dstPortText, , , pidText, comm] = f as [string, string, string, string, string, string, string, string, string];
  const sbx = deps.lookup(id);
  const dstPort = Number(dstPortText);
  if (!sbx || !Number.isInteger(dstPort)) {
    client.destroy();
    return;
  }
  const at = Date.now();
  const started = performance.now();
  const pid = Number(pidText) > 0 ? Number(pidText) : null;
  const command = comm && comm !== '-' ? comm.slice(0, 64) : null;
  const { ledger } = deps;
  const base = { sandboxId: id, at, protocol: 'tcp' as const, port: dstPort, pid, command };
  const refuse = (name: string | null, address: string | null, v: Pick<Verdict, 'rule' | 'reason'>) => {
    ledger.add({ ...base, name, address, verdict: 'refused', rule: v.rule, reason: v.reason }, false);
    client.destroy();
  };

  if (dstIp === RESOLVER_ADDRESS && dstPort === 53) return dnsOverTcp(client, sbx, first);
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
    candidates = await deps.env.resolve(name);
    if (candidates.length === 0) return refuse(name, null, { rule: 'nxdomain', reason: `${name} no longer resolves` });
  }
  // The first real address the policy allows; when none, the first one's refusal is the reason given.
  const host = deps.host();
  let verdict: Verdict | null = null;
  let address = candidates[0]!;
  for (const c of candidates) {
    const v = evaluate(sbx.policy, { ip: c, port: dstPort, name, dialed: deps.env.target(c) ?? undefined }, host);
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
  const dest: Destination = { ip: address, port: dstPort, name, dialed: deps.env.target(address) ?? undefined };
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
    const v = evaluate(deps.lookup(id)?.policy ?? sbx.policy, dest, host);
    if (!v.allowed) return abort({ rule: v.rule, reason: v.reason });
  }
  let dialled: net.Socket;
  try {
    dialled = await deps.env.dial(address, dstPort);
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
      const v = evaluate(deps.lookup(id)?.policy ?? sbx.policy, dest, host);
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
