/**
 * The sandbox's DNS, answered by the daemon from the sandbox's policy (messages
 * parsed and built with dns-packet):
 *
 * - a name the policy cannot allow gets NXDOMAIN, and is never sent to a real
 *   resolver (no lookups of `secret.attacker.example` leave the daemon);
 * - an allowed name that exists gets an A record with its stand-in address
 *   (names.ts), never the real one; AAAA and other types get an empty answer, so
 *   clients use the stand-in;
 * - everything is written to the ledger.
 */
import dnsPacket from 'dns-packet';
import { nameAllowed, normalizeName, type CompiledPolicy } from './policy.js';
import type { StandIns } from './names.js';
import type { NetworkEnvironment } from './environment.js';
import type { EgressLedger } from './ledger.js';

const NOERROR = 0;
const FORMERR = 1;
const SERVFAIL = 2;
const NXDOMAIN = 3;
const NOTIMP = 4;
/** Stand-ins are stable for the sandbox's life: a minute of caching costs nothing. */
const TTL = 60;

export interface DnsContext {
  sandboxId: string;
  policy: () => CompiledPolicy;
  names: StandIns;
  env: NetworkEnvironment;
  ledger: EgressLedger;
}

/** The answer to one DNS message, or null when it is not worth one (not a query, unreadable). */
export async function answerDns(msg: Buffer, c: DnsContext): Promise<Buffer | null> {
  let q: dnsPacket.DecodedPacket;
  try {
    q = dnsPacket.decode(msg);
  } catch {
    // Unreadable: FORMERR when at least the id is there, so the client stops waiting.
    if (msg.length < 12) return null;
    const r = Buffer.from(msg.subarray(0, 12));
    r[2] = 0x80 | (r[2]! & 0x01);
    r[3] = FORMERR;
    r.writeUInt32BE(0, 4);
    r.writeUInt32BE(0, 8);
    return r;
  }
  if (q.type !== 'query') return null;
  const question = q.questions?.[0];
  const reply = (rcode: number, answers: dnsPacket.Answer[] = []) =>
    dnsPacket.encode({
      type: 'response',
      id: q.id ?? 0,
      flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | rcode,
      questions: question ? [question] : [],
      answers,
    });
  if (!question || q.questions!.length !== 1) return reply(question ? NOTIMP : FORMERR);
  const at = Date.now();
  const name = normalizeName(question.name);
  const log = (verdict: 'allowed' | 'refused', rule: string, reason: string, address: string | null = null) =>
    c.ledger.add(
      { sandboxId: c.sandboxId, at, protocol: 'dns', name: name ?? question.name.slice(0, 253), address, port: 53, pid: null, command: null, verdict, rule, reason: `${question.type}: ${reason}` },
      false,
    );
  if (!name) {
    log('refused', 'invalid', 'not a DNS name');
    return reply(NXDOMAIN);
  }
  const v = nameAllowed(c.policy(), name);
  if (!v.allowed) {
    log('refused', v.rule, v.reason);
    return reply(NXDOMAIN);
  }
  let addrs: string[];
  try {
    addrs = await c.env.resolve(name);
  } catch {
    log('refused', 'resolver', 'the daemon could not resolve it');
    return reply(SERVFAIL);
  }
  if (addrs.length === 0) {
    log('refused', 'nxdomain', 'the name does not exist');
    return reply(NXDOMAIN);
  }
  if (question.type === 'A') {
    const standIn = c.names.forName(name);
    log('allowed', v.rule, `${v.reason}; answered ${standIn}`, addrs[0]!);
    return reply(NOERROR, [{ type: 'A', name: question.name, ttl: TTL, data: standIn }]);
  }
  // AAAA, HTTPS, MX...: the name exists; the sandbox reaches it through its A record.
  log('allowed', v.rule, `${v.reason}; no records of this type are given out`, addrs[0]!);
  return reply(NOERROR);
}
