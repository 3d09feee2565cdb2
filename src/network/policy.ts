/**
 * Egress policy: which destinations a sandbox may open connections to. A plain
 * value (`'none' | 'all' | { allow, deny }`) that any service can pass at create
 * (the templates work passes an allowlist of package mirrors), compiled here
 * into rules and evaluated by the gateway for every new connection and by the
 * DNS answerer for every name.
 *
 * Rule syntax (one string each):
 *   example.com            that name exactly            *.example.com   any name below it (not the name itself)
 *   10.1.0.0/16, 1.2.3.4   an IPv4 network or address   2001:db8::/32, [2001:db8::1]   the same for IPv6
 *   *                      any address that is not special (below)
 *   any of them + :443, :80,443 or :8000-8100   only those ports (IPv6 in brackets: [2001:db8::/32]:443)
 *
 * Decisions, in order: a deny rule matching the address, the name the sandbox
 * resolved through the daemon or the TLS SNI / HTTP Host refuses; a name in the
 * SNI/Host that differs from the name resolved refuses (fronting); special
 * addresses (private, loopback, link-local and metadata, CGNAT, ULA, this host's
 * own) need an allow rule that names them explicitly: an exact domain, or a CIDR
 * inside the special range (10.0.0.0/8 names 10/8; 0.0.0.0/0 does not); the
 * daemon's own port on this host is never reachable. Then an allow rule must
 * match: a domain rule matches only the name resolved through the daemon's DNS
 * (never a name the sandbox merely claims in SNI or Host, which is how a raw IP
 * would dodge a domain allowlist); a CIDR or `*` matches the address.
 */
import ipaddr from 'ipaddr.js';
import { InvalidArgumentError } from '../errors/index.js';

export type EgressRules = { allow: string[]; deny?: string[] | undefined };
export type Egress = 'none' | 'all' | EgressRules;

type Addr = ipaddr.IPv4 | ipaddr.IPv6;

interface PortRange {
  from: number;
  to: number;
}

export type Rule =
  | { text: string; kind: 'any'; ports: PortRange[] | null }
  | { text: string; kind: 'domain'; name: string; ports: PortRange[] | null }
  | { text: string; kind: 'suffix'; suffix: string; ports: PortRange[] | null }
  | { text: string; kind: 'cidr'; net: Addr; bits: number; ports: PortRange[] | null };

export interface CompiledPolicy {
  mode: 'none' | 'all' | 'rules';
  allow: Rule[];
  deny: Rule[];
}

/** The special ranges of the issue, plus the unspecified, multicast and broadcast blocks. */
const SPECIAL: ReadonlyArray<[string, string]> = [
  ['0.0.0.0/8', 'unspecified'],
  ['10.0.0.0/8', 'private'],
  ['100.64.0.0/10', 'carrier-grade NAT'],
  ['127.0.0.0/8', 'loopback'],
  ['169.254.0.0/16', 'link-local (cloud metadata)'],
  ['172.16.0.0/12', 'private'],
  ['192.168.0.0/16', 'private'],
  ['224.0.0.0/4', 'multicast'],
  ['240.0.0.0/4', 'reserved'],
  ['::/128', 'unspecified'],
  ['::1/128', 'loopback'],
  ['fc00::/7', 'unique local (private)'],
  ['fe80::/10', 'link-local'],
  ['ff00::/8', 'multicast'],
];
const SPECIAL_NETS = SPECIAL.map(([c, label]) => {
  const [net, bits] = ipaddr.parseCIDR(c);
  return { net, bits, label, text: c };
});

export const MAX_RULES = 256;
const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

/** An address as ipaddr.js understands it, IPv4-mapped IPv6 turned into IPv4 (::ffff:10.0.0.1 is 10.0.0.1). */
export function parseAddress(ip: string): Addr | null {
  if (!ipaddr.isValid(ip)) return null;
  const a = ipaddr.parse(ip);
  return a.kind() === 'ipv6' && (a as ipaddr.IPv6).isIPv4MappedAddress() ? (a as ipaddr.IPv6).toIPv4Address() : a;
}

/** Lowercase, no trailing dot; null when it is not a DNS name of letters, digits and hyphens. */
export function normalizeName(name: string): string | null {
  const n = name.trim().toLowerCase().replace(/\.$/, '');
  if (n.length === 0 || n.length > 253) return null;
  return n.split('.').every((l) => LABEL.test(l)) ? n : null;
}

function parsePorts(spec: string, rule: string): PortRange[] {
  const out: PortRange[] = [];
  for (const part of spec.split(',')) {
    const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(part.trim());
    const from = m ? Number(m[1]) : NaN;
    const to = m?.[2] !== undefined ? Number(m[2]) : from;
    if (!m || from < 1 || to > 65535 || to < from) {
      throw new InvalidArgumentError(`egress rule ${JSON.stringify(rule)}: ports must be 1-65535, a list (80,443) or a range (8000-8100)`);
    }
    out.push({ from, to });
  }
  return out;
}

/** Parse one rule; throws InvalidArgumentError naming the rule and what is wrong. */
export function parseRule(text: string): Rule {
  const raw = text.trim();
  let host = raw;
  let ports: PortRange[] | null = null;
  const bracket = /^\[([^\]]+)\](?::(.+))?$/.exec(raw);
  if (bracket) {
    host = bracket[1]!;
    if (bracket[2] !== undefined) ports = parsePorts(bracket[2], raw);
  } else if ((raw.match(/:/g) ?? []).length === 1) {
    const i = raw.lastIndexOf(':');
    host = raw.slice(0, i);
    ports = parsePorts(raw.slice(i + 1), raw);
  }
  if (host === '*') return { text: raw, kind: 'any', ports };
  if (host.includes('/') || ipaddr.isValid(host)) {
    let net: Addr;
    let bits: number;
    try {
      if (host.includes('/')) [net, bits] = ipaddr.parseCIDR(host);
      else {
        net = ipaddr.parse(host);
        bits = net.kind() === 'ipv4' ? 32 : 128;
      }
    } catch {
      throw new InvalidArgumentError(`egress rule ${JSON.stringify(raw)}: not a valid address or CIDR`);
    }
    if (net.kind() === 'ipv6' && (net as ipaddr.IPv6).isIPv4MappedAddress()) {
      net = (net as ipaddr.IPv6).toIPv4Address();
      bits = Math.max(0, bits - 96);
    }
    return { text: raw, kind: 'cidr', net, bits, ports };
  }
  if (host.startsWith('*.')) {
    const suffix = normalizeName(host.slice(2));
    if (!suffix || !suffix.includes('.')) {
      throw new InvalidArgumentError(`egress rule ${JSON.stringify(raw)}: *.suffix needs a domain with at least two labels, e.g. *.example.com`);
    }
    return { text: raw, kind: 'suffix', suffix, ports };
  }
  const name = normalizeName(host);
  if (!name) {
    throw new InvalidArgumentError(
      `egress rule ${JSON.stringify(raw)}: use a domain (example.com, *.example.com), an address or CIDR (10.0.0.0/8, [2001:db8::/32]) or *, optionally with :ports`,
    );
  }
  return { text: raw, kind: 'domain', name, ports };
}

/** Check and compile a policy; throws InvalidArgumentError on the first bad rule. */
export function compilePolicy(egress: Egress): CompiledPolicy {
  if (egress === 'none') return { mode: 'none', allow: [], deny: [] };
  if (egress === 'all') return { mode: 'all', allow: [parseRule('*')], deny: [] };
  const deny = egress.deny ?? [];
  if (egress.allow.length + deny.length > MAX_RULES) throw new InvalidArgumentError(`an egress policy has at most ${MAX_RULES} rules`);
  return { mode: 'rules', allow: egress.allow.map(parseRule), deny: deny.map(parseRule) };
}

function portOk(rule: Rule, port: number | undefined): boolean {
  if (!rule.ports || port === undefined) return true;
  return rule.ports.some((r) => port >= r.from && port <= r.to);
}

function nameMatches(rule: Rule, name: string): boolean {
  if (rule.kind === 'domain') return rule.name === name;
  if (rule.kind === 'suffix') return name.endsWith(`.${rule.suffix}`);
  return false;
}

function addrMatches(rule: Rule, a: Addr): boolean {
  if (rule.kind !== 'cidr' || rule.net.kind() !== a.kind()) return false;
  return (a as ipaddr.IPv4).match(rule.net as ipaddr.IPv4, rule.bits);
}

/** The special range an address is in, or null for an ordinary (public) address. */
export function specialRange(a: Addr): { label: string; bits: number; text: string } | null {
  for (const s of SPECIAL_NETS) {
    if (s.net.kind() === a.kind() && (a as ipaddr.IPv4).match(s.net as ipaddr.IPv4, s.bits)) return s;
  }
  return null;
}

export interface Destination {
  /** The address about to be dialled. */
  ip: string;
  port: number;
  /** The name the sandbox resolved through the daemon's DNS to reach it, when it did. */
  name?: string | undefined;
  /** The name in the TLS SNI or HTTP Host header of the connection's first bytes, when seen. */
  claimed?: string | undefined;
  /** Where the dial really goes when that differs from `ip` (a simulated internet's loopback stand-in): this host's checks use it. */
  dialed?: string | undefined;
}

export interface HostFacts {
  /** This host's own addresses (every interface), denied unless named explicitly. */
  ownAddresses: ReadonlySet<string>;
  /** The daemon's own port: never reachable on this host's addresses. */
  daemonPort: number;
  /** Addresses the daemon itself listens on (0.0.0.0 means all of them). */
  daemonHost: string;
}

export interface Verdict {
  allowed: boolean;
  /** The rule that decided (its text), or a reason code: none, default-deny, special, own-host, daemon, sni-mismatch, raw-address. */
  rule: string;
  /** One sentence for the ledger and logs. */
  reason: string;
}

const refuse = (rule: string, reason: string): Verdict => ({ allowed: false, rule, reason });

/** Decide one connection. Pure: the host facts come in as arguments. */
export function evaluate(p: CompiledPolicy, d: Destination, host: HostFacts): Verdict {
  const a = parseAddress(d.ip);
  if (!a) return refuse('invalid', `${d.ip} is not an address`);
  const ip = a.toString();
  if (p.mode === 'none') return refuse('none', 'egress is none: no connection leaves this sandbox');
  // This host's own addresses, judged on where the dial really lands.
  const real = (d.dialed ? parseAddress(d.dialed) : null) ?? a;
  const realIp = real.toString();
  const realLoopback = specialRange(real)?.label === 'loopback';
  const own = host.ownAddresses.has(ip) || host.ownAddresses.has(realIp) || specialRange(a)?.label === 'loopback' || ip === '0.0.0.0' || ip === '::';
  const daemonEverywhere = host.daemonHost === '0.0.0.0' || host.daemonHost === '::';
  const onThisHost = own || realLoopback || realIp === '0.0.0.0' || realIp === '::';
  if (d.port === host.daemonPort && onThisHost && (daemonEverywhere || realLoopback || parseAddress(host.daemonHost)?.toString() === realIp || host.ownAddresses.has(realIp))) {
    return refuse('daemon', "the daemon's own port is never reachable from a sandbox");
  }
  const name = d.name ? normalizeName(d.name) ?? undefined : undefined;
  const claimed = d.claimed ? normalizeName(d.claimed) ?? d.claimed.toLowerCase() : undefined;
  if (name && claimed && claimed !== name) {
    return refuse('sni-mismatch', `the connection names ${claimed} (TLS SNI or HTTP Host) but resolved ${name}`);
  }
  for (const r of p.deny) {
    if (!portOk(r, d.port)) continue;
    if (addrMatches(r, a) || (name && nameMatches(r, name)) || (claimed && nameMatches(r, claimed)) || r.kind === 'any') {
      return refuse(r.text, `denied by rule ${r.text}`);
    }
  }
  const special = specialRange(a);
  if (special || own) {
    const explicit = p.allow.find(
      (r) =>
        portOk(r, d.port) &&
        ((r.kind === 'domain' && name === r.name) || (r.kind === 'cidr' && addrMatches(r, a) && r.bits >= (special?.bits ?? (a.kind() === 'ipv4' ? 32 : 128)))),
    );
    if (explicit) return { allowed: true, rule: explicit.text, reason: `allowed by rule ${explicit.text} (names a ${special?.label ?? 'host'} address)` };
    return special
      ? refuse('special', `${ip} is ${special.label} (${special.text}): allowed only when a rule names it explicitly`)
      : refuse('own-host', `${ip} is this host's own address: allowed only when a rule names it explicitly`);
  }
  for (const r of p.allow) {
    if (!portOk(r, d.port)) continue;
    if (r.kind === 'any' || addrMatches(r, a) || (name && nameMatches(r, name))) {
      return { allowed: true, rule: r.text, reason: p.mode === 'all' ? 'egress is all' : `allowed by rule ${r.text}` };
    }
  }
  if (!name && claimed && p.allow.some((r) => nameMatches(r, claimed))) {
    return refuse('raw-address', `${ip} was not resolved through the sandbox's DNS; ${claimed} is allowed only by name`);
  }
  return refuse('default-deny', `no rule allows ${name ?? ip} port ${d.port}`);
}

/**
 * Whether the DNS should answer `name` at all: some allow rule could match it (a domain rule, or `*`)
 * and no deny rule names it. Names of refused lookups are never sent to a real resolver.
 */
export function nameAllowed(p: CompiledPolicy, rawName: string): Verdict {
  const name = normalizeName(rawName);
  if (!name) return refuse('invalid', `${rawName} is not a DNS name`);
  if (p.mode === 'none') return refuse('none', 'egress is none');
  const deny = p.deny.find((r) => nameMatches(r, name) && !r.ports);
  if (deny) return refuse(deny.text, `denied by rule ${deny.text}`);
  const allow = p.allow.find((r) => r.kind === 'any' || nameMatches(r, name));
  if (allow) return { allowed: true, rule: allow.text, reason: p.mode === 'all' ? 'egress is all' : `allowed by rule ${allow.text}` };
  return refuse('default-deny', `no rule allows the name ${name}`);
}
