/**
 * Networking: a sandbox's egress policy and public ports, its egress ledger,
 * and the URLs of its ports. The rule grammar is checked here (a bad rule is a
 * 400 naming it) with the same parser the gateway uses (src/network/policy.ts).
 */
import { z } from 'zod';
import { SandboxId, Timestamp } from './common.js';
import { MAX_RULES, parseRule } from '../network/policy.js';

export const EgressRule = z
  .string()
  .min(1)
  .max(300)
  .superRefine((r, ctx) => {
    try {
      parseRule(r);
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
    }
  })
  .describe(
    'A destination: a domain (example.com), its subdomains (*.example.com), an address or CIDR (10.0.0.0/8, [2001:db8::/32]) or * (any public address), each optionally with :port, :80,443 or :8000-8100',
  );

export const EgressRules = z
  .object({
    allow: z.array(EgressRule).max(MAX_RULES).describe('Destinations the sandbox may connect to; everything else is refused'),
    deny: z.array(EgressRule).max(MAX_RULES).optional().describe('Destinations refused even when an allow rule matches them'),
  })
  .strict();

export const EgressPolicy = z
  .union([z.literal('none'), z.literal('all'), EgressRules])
  .describe(
    "Outbound connections: none (default; loopback only), all (any public address; private, loopback, link-local and metadata ranges and this host stay refused unless an allow rule names them), or {allow, deny}. Domain rules hold through the sandbox's DNS, which the daemon answers from this policy, and are checked against TLS SNI and HTTP Host",
  );
export type EgressPolicy = z.infer<typeof EgressPolicy>;

export const Port = z.coerce.number().int().min(1).max(65535).describe('TCP port inside the sandbox');

export const PublicPorts = z
  .union([z.literal('all'), z.array(z.number().int().min(1).max(65535)).max(64)])
  .describe(
    "Ports whose URLs need no token (anyone who can reach the daemon can use them): a list, or 'all' for every port of the sandbox (E2B's allowPublicTraffic: true); default none ([])",
  );
export type PublicPorts = z.infer<typeof PublicPorts>;

export const NetworkConfig = z
  .object({
    egress: EgressPolicy.optional(),
    publicPorts: PublicPorts.optional(),
  })
  .strict()
  .describe("The sandbox's network: egress policy and public ports");
export type NetworkConfig = z.infer<typeof NetworkConfig>;

export const SandboxNetwork = z.object({
  egress: EgressPolicy,
  publicPorts: z.union([z.literal('all'), z.array(z.number())]).describe("Ports reachable without a token ('all': every port)"),
  gateway: z.boolean().describe("Whether the sandbox's traffic already goes through the daemon's gateway (made on first need)"),
  resolver: z.string().optional().describe('The DNS server address inside the sandbox (when the gateway is set up)'),
});
export type SandboxNetwork = z.infer<typeof SandboxNetwork>;

export const NetworkLogQuery = z
  .object({
    since: z.coerce.number().int().min(0).optional().describe('Cursor: only entries written after it (the `cursor` of the previous answer); default 0'),
    limit: z.coerce.number().int().min(1).max(1000).optional().describe('Most entries to return; default 200'),
    waitMs: z.coerce
      .number()
      .int()
      .min(0)
      .max(30_000)
      .optional()
      .describe('When nothing is newer than `since`, wait up to this long for an entry (long poll, for following); default 0'),
  })
  .strict();

export const NetworkLogEntry = z.object({
  id: z.number().describe('Entry id: an allowed connection appears once when opened and again, same id, when closed'),
  seq: z.number().describe('Cursor of this write'),
  at: Timestamp.describe('When the attempt was made'),
  protocol: z.enum(['tcp', 'dns']),
  name: z.string().nullable().describe('Name asked for (DNS, or the name behind the address), or the TLS SNI / HTTP Host claimed'),
  address: z.string().nullable().describe('Address dialled (for DNS: the first real address found)'),
  port: z.number().nullable(),
  pid: z.number().nullable().describe("The process's pid inside the sandbox, when known"),
  command: z.string().nullable().describe("The process's name, when known"),
  verdict: z.enum(['allowed', 'refused']),
  rule: z.string().describe('The rule that decided, or a reason code (none, default-deny, special, own-host, daemon, sni-mismatch, raw-address, stale...)'),
  reason: z.string(),
  bytesUp: z.number().describe('Bytes the sandbox sent'),
  bytesDown: z.number().describe('Bytes the sandbox received'),
  durationMs: z.number().nullable().describe('How long the connection lasted (null while open)'),
  state: z.enum(['open', 'closed']),
});
export type NetworkLogEntry = z.infer<typeof NetworkLogEntry>;

export const NetworkLogResponse = z.object({
  entries: z.array(NetworkLogEntry),
  cursor: z.number().describe('Pass as `since` to get what comes next'),
});

export const PortParams = z.object({ id: SandboxId, port: Port });

export const PortUrlQuery = z
  .object({
    ttlMs: z.coerce
      .number()
      .int()
      .min(1000)
      .max(30 * 24 * 3600_000)
      .optional()
      .describe('How long the signed URL stays valid; default one hour'),
  })
  .strict();

export const PortAccess = z.object({
  port: z.number(),
  public: z.boolean().describe('Reachable without a token'),
  url: z.string().describe('Host-routed URL: http://<port>-<id>.localhost:<daemon port>/ (browsers resolve *.localhost to loopback)'),
  pathUrl: z.string().describe('Path-routed URL on the daemon: /v1/sandboxes/<id>/ports/<port>/'),
  token: z.string().describe('Send as the X-Capsule-Port-Token header to either URL; valid for every port of this sandbox while it lives'),
  signedUrl: z.string().describe('The host-routed URL with a capsule_token query parameter valid for this port until expiresAt (for browsers)'),
  expiresAt: Timestamp.describe('When signedUrl stops working'),
});
export type PortAccess = z.infer<typeof PortAccess>;
