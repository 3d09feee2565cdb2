/**
 * Protocol negotiation (docs/agent-protocol.md, "Handshake"): the daemon
 * offers its version and feature bits in HELLO; the agent answers with its
 * version and the features in effect on the connection. Any agent of the
 * same major version is served, with only the features both sides have.
 *
 * HELLO only grows at its end: a 1.0 agent reads the major and ignores the
 * rest; a 1.0 agent's answer stops after initialWindow and is taken as
 * minor 0 with no features.
 */
import { FEATURE_BITS, PayloadReader, PayloadWriter, PROTO_MAJOR, PROTO_MINOR } from './frames.js';

export type AgentFeature = keyof typeof FEATURE_BITS;

/** Every feature this daemon knows, in bit order. */
export const ALL_FEATURES = Object.keys(FEATURE_BITS) as AgentFeature[];

/** The protocol a connection speaks: the agent's version and the features both sides have. */
export interface AgentProtocol {
  readonly major: number;
  readonly minor: number;
  readonly features: ReadonlySet<AgentFeature>;
}

export function featureBits(features: Iterable<AgentFeature>): bigint {
  let bits = 0n;
  for (const f of features) bits |= FEATURE_BITS[f];
  return bits;
}

/** Known features among the bits; unknown bits (a newer agent's) are ignored. */
export function featuresFrom(bits: bigint): Set<AgentFeature> {
  return new Set(ALL_FEATURES.filter((f) => (bits & FEATURE_BITS[f]) !== 0n));
}

/** The daemon's HELLO: u32 major, bytes clientName, u32 minor, u64 features offered. */
export function encodeHello(offer: Iterable<AgentFeature>): Buffer {
  return new PayloadWriter().u32(PROTO_MAJOR).bytes('capsule-daemon').u32(PROTO_MINOR).u64(featureBits(offer)).finish();
}

export interface AgentHello {
  major: number;
  minor: number;
  agentVersion: string;
  maxPayload: number;
  initialWindow: number;
  /** Features in effect: what the agent announced, limited to what was offered and is known. */
  features: Set<AgentFeature>;
}

/**
 * The agent's HELLO: u32 major, bytes agentVersion, u32 maxPayload, u32 initialWindow (all 1.0), then from
 * 1.1 on u32 minor, u64 features. Everything after the major is read only when the major is ours: another
 * major may lay out the rest differently, and only its number and version string are shown.
 */
export function decodeHello(payload: Buffer, offered: ReadonlySet<AgentFeature>): AgentHello {
  const r = new PayloadReader(payload, 'HELLO');
  const major = r.u32();
  const agentVersion = r.remaining >= 4 ? r.bytes(256).toString('utf8') : '';
  const hello: AgentHello = { major, minor: 0, agentVersion, maxPayload: 0, initialWindow: 0, features: new Set() };
  if (major !== PROTO_MAJOR) {
    // A newer agent may have sent its minor at the same place; show it when it is there.
    if (r.remaining >= 8 + 4) {
      r.u32();
      r.u32();
      hello.minor = r.u32();
    }
    return hello;
  }
  hello.maxPayload = r.u32();
  hello.initialWindow = r.u32();
  if (r.remaining >= 12) {
    hello.minor = r.u32();
    const bits = r.u64big();
    // An agent may only enable what we offered: anything else would be behaviour we did not ask for.
    hello.features = new Set([...featuresFrom(bits)].filter((f) => offered.has(f)));
  }
  return hello;
}

export function versionString(p: { major: number; minor: number }): string {
  return `${p.major}.${p.minor}`;
}
