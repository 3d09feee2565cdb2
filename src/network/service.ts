/**
 * NetworkService: the one service behind every view of a sandbox's network
 * (REST, MCP, SDK, CLI). It keeps each sandbox's egress policy and public ports
 * (SQLite, and compiled in memory for the gateway), sets up the runtime's
 * `gateway` mode when a sandbox first needs it, answers the ledger, signs and
 * checks port URLs, and opens streams to ports inside sandboxes.
 *
 * The sandbox manager calls the `SandboxNetworking` half during create, end and
 * recovery; callers use the RequestContext-first methods.
 */
import crypto from 'node:crypto';
import os from 'node:os';
import type { Duplex } from 'node:stream';
import type { Db } from '../store/db.js';
import { statementCache, type Statements } from '../store/statements.js';
import { SYSTEM_CONTEXT, type RequestContext } from '../auth/context.js';
import { ConflictError, UnsupportedError } from '../errors/index.js';
import type { AgentConnection } from '../agent/types.js';
import type { NetworkSpec, RuntimeDriver } from '../runtime/types.js';
import { backendOf } from '../runtime/backends.js';
import type { SandboxRecord } from '../sandboxes/store.js';
import type { EgressPolicy, NetworkConfig, NetworkLogEntry, PortAccess, PublicPorts, SandboxNetwork } from '../schemas/network.js';
import { compilePolicy, type CompiledPolicy, type HostFacts } from './policy.js';
import { RESOLVER_ADDRESS, StandIns } from './names.js';
import { EgressLedger, type LedgerEntry } from './ledger.js';
import { Gateway, type Logger, type SandboxNet } from './gateway.js';
import type { NetworkEnvironment } from './environment.js';

/** What the service needs of the sandbox manager (kept narrow: no import cycle, easy to fake). */
export interface SandboxAccess {
  get(ctx: RequestContext, id: string): SandboxRecord;
  use(ctx: RequestContext, id: string, what: string): Promise<{ rec: SandboxRecord; conn: AgentConnection }>;
}

/** The half of the service the sandbox manager calls while it creates, ends and re-adopts sandboxes. */
export interface SandboxNetworking {
  /**
   * Check a create's network settings and say what the runtime must make (`none` unless egress is needed now);
   * `backend` is the driver that will hold the sandbox (runtime/backends.ts `backendFor`), default the daemon's.
   */
  specFor(cfg: NetworkConfig | undefined, backend?: RuntimeDriver): NetworkSpec;
  /** Before the container starts, so its policy holds from its first packet. */
  register(id: string, cfg: NetworkConfig | undefined): void;
  /** Once the sandbox runs and its agent answers: the gateway for one started without it (a pooled one), and its resolver. */
  ready(id: string, conn: AgentConnection, signal?: AbortSignal): Promise<void>;
  /** The sandbox ended (or its create failed): close its connections, drop its state. */
  ended(id: string): void;
  /** After a daemon restart, for each running sandbox: reload its policy; restart its relay if it died. */
  adopt(id: string, conn: AgentConnection): Promise<void>;
}

/**
 * Called before a port of a sandbox is reached, with the sandbox's record: the place where the
 * lifecycle work resumes a paused sandbox that has auto-resume (issue 12). The default accepts
 * running sandboxes and refuses the rest with a conflict naming the state.
 */
export type PortWakeHook = (rec: SandboxRecord) => Promise<void>;

interface Row {
  sandbox_id: string;
  egress: string;
  public_ports: string;
  token: string;
  gateway: number;
}

interface State extends SandboxNet {
  egress: EgressPolicy;
  publicPorts: PublicPorts;
  token: string;
  gateway: boolean;
}

const DEFAULT_LOG_LIMIT = 200;
const DEFAULT_URL_TTL_MS = 3600_000;
export const PORT_TOKEN_HEADER = 'x-capsule-port-token';
export const PORT_TOKEN_PARAM = 'capsule_token';

function needsGateway(egress: EgressPolicy): boolean {
  return egress !== 'none';
}

/** Whether any port is public (a list with ports, or every port). */
function anyPublic(p: PublicPorts | undefined): boolean {
  return p === 'all' || (p?.length ?? 0) > 0;
}

function isPublic(p: PublicPorts, port: number): boolean {
  return p === 'all' || p.includes(port);
}

export class NetworkService implements SandboxNetworking {
  private readonly sql: Statements;
  private readonly states = new Map<string, State>();
  readonly ledger: EgressLedger;
  readonly gateway: Gateway;
  private facts: HostFacts = { ownAddresses: new Set(), daemonPort: -1, daemonHost: '127.0.0.1' };
  private factsAt = 0;
  private daemonUrl = 'http://127.0.0.1';
  private wake: PortWakeHook = async (rec) => {
    if (rec.state !== 'running') throw new ConflictError(`sandbox ${rec.id} is ${rec.state}: its ports answer only while it runs`, { id: rec.id, state: rec.state });
  };

  constructor(
    db: Db,
    private readonly runtime: RuntimeDriver,
    private readonly sandboxes: SandboxAccess,
    private readonly env: NetworkEnvironment,
    private readonly gatewaySocket: string,
    private readonly logger: Logger,
  ) {
    this.sql = statementCache(db);
    this.ledger = new EgressLedger(db);
    this.gateway = new Gateway(gatewaySocket, {
      lookup: (id) => this.states.get(id),
      env,
      ledger: this.ledger,
      host: () => this.hostFacts(),
      log: logger,
    });
  }

  /** Where the daemon listens, once it does: port URLs and the "daemon's own port" rule need it. */
  setDaemonAddress(host: string, port: number, url: string): void {
    this.facts = { ...this.facts, daemonHost: host, daemonPort: port };
    this.daemonUrl = url;
  }

  /** The lifecycle work replaces this to wake paused sandboxes on a port request. */
  setPortWakeHook(hook: PortWakeHook): void {
    this.wake = hook;
  }

  private hostFacts(): HostFacts {
    if (Date.now() - this.factsAt > 30_000) {
      const own = new Set<string>();
      for (const list of Object.values(os.networkInterfaces())) for (const a of list ?? []) own.add(a.address.replace(/%.*$/, ''));
      this.facts = { ...this.facts, ownAddresses: own };
      this.factsAt = Date.now();
    }
    return this.facts;
  }

  private gatewaySpec(): NetworkSpec {
    return { mode: 'gateway', gateway: { socket: this.gatewaySocket, resolver: RESOLVER_ADDRESS } };
  }

  // --- for the sandbox manager ---------------------------------------------------------

  specFor(cfg: NetworkConfig | undefined, backend: RuntimeDriver = this.runtime): NetworkSpec {
    const egress = cfg?.egress ?? 'none';
    compilePolicy(egress);
    if (anyPublic(cfg?.publicPorts) && (!backend.connectPort || !backend.capabilities.network.includes('gateway'))) {
      throw new UnsupportedError(`the ${backend.kind} backend cannot expose sandbox ports here, so it has no public ports`, {
        backend: backend.kind,
        isolation: backend.capabilities.isolation,
      });
    }
    // Public ports are reached through the gateway mode's relay: a backend that cannot add it later gets it now.
    if (!needsGateway(egress) && !(anyPublic(cfg?.publicPorts) && backend.capabilities.networkAfterCreate === false)) return { mode: 'none' };
    if (!backend.capabilities.network.includes('gateway')) {
      throw new UnsupportedError(`the ${backend.kind} backend cannot give sandboxes egress here (no gateway network mode; see capsule doctor)`, {
        backend: backend.kind,
        isolation: backend.capabilities.isolation,
      });
    }
    return this.gatewaySpec();
  }

  register(id: string, cfg: NetworkConfig | undefined, live = true): void {
    const egress = cfg?.egress ?? 'none';
    const row: Row = {
      sandbox_id: id,
      egress: JSON.stringify(egress),
      public_ports: JSON.stringify(cfg?.publicPorts ?? []),
      token: crypto.randomBytes(24).toString('base64url'),
      gateway: needsGateway(egress) ? 1 : 0,
    };
    this.sql(
      `INSERT INTO sandbox_network (sandbox_id, egress, public_ports, token, gateway) VALUES (@sandbox_id, @egress, @public_ports, @token, @gateway)
       ON CONFLICT(sandbox_id) DO UPDATE SET egress = excluded.egress, public_ports = excluded.public_ports, gateway = excluded.gateway`,
    ).run(row);
    this.states.delete(id);
    if (live) this.load(id);
  }

  async ready(id: string, conn: AgentConnection, signal?: AbortSignal): Promise<void> {
    const st = this.load(id);
    if (!st || !needsGateway(st.egress)) return;
    signal?.throwIfAborted();
    // Made at create when the runtime got the gateway spec; a pooled sandbox gets it now.
    await this.runtime.attachNetwork?.(id, this.gatewaySpec());
    await this.writeResolver(conn);
    this.markGateway(id, st);
  }

  ended(id: string): void {
    const st = this.states.get(id);
    if (!st) return;
    this.states.delete(id);
    for (const f of [...st.flows]) f.recheck(compilePolicy('none'), this.hostFacts());
  }

  async adopt(id: string, conn: AgentConnection): Promise<void> {
    const st = this.load(id);
    if (!st?.gateway) return;
    await this.runtime.attachNetwork?.(id, this.gatewaySpec());
    // A relay that had died is back; its resolver file is already in place (written at first attach).
    void conn;
  }

  // --- for callers -----------------------------------------------------------------------

  get(ctx: RequestContext, id: string): SandboxNetwork {
    this.sandboxes.get(ctx, id);
    return this.view(this.load(id, false));
  }

  /** Change the policy and/or public ports of a running sandbox: effective for new connections at once, and open ones it no longer allows are closed. */
  async set(ctx: RequestContext, id: string, patch: NetworkConfig): Promise<SandboxNetwork> {
    const { conn } = await this.sandboxes.use(ctx, id, 'change its network');
    if ((patch.egress !== undefined && needsGateway(patch.egress)) || anyPublic(patch.publicPorts)) this.specFor(patch, backendOf(this.runtime, id));
    if (patch.egress !== undefined) compilePolicy(patch.egress);
    let st = this.load(id);
    if (!st) {
      this.register(id, {});
      st = this.load(id)!;
    }
    const egress = patch.egress ?? st.egress;
    const publicPorts = patch.publicPorts ?? st.publicPorts;
    if (needsGateway(egress) && !st.gateway) await this.ensureGateway(id, st, conn);
    this.sql('UPDATE sandbox_network SET egress = ?, public_ports = ? WHERE sandbox_id = ?').run(JSON.stringify(egress), JSON.stringify(publicPorts), id);
    st.egress = egress;
    st.publicPorts = publicPorts === 'all' ? 'all' : [...publicPorts];
    st.policy = compilePolicy(egress);
    for (const f of [...st.flows]) f.recheck(st.policy, this.hostFacts());
    this.logger.info({ id, egress: typeof egress === 'string' ? egress : 'rules', publicPorts }, 'sandbox network changed');
    return this.view(st);
  }

  async log(
    ctx: RequestContext,
    id: string,
    q: { since?: number | undefined; limit?: number | undefined; waitMs?: number | undefined; signal?: AbortSignal | undefined },
  ): Promise<{ entries: NetworkLogEntry[]; cursor: number }> {
    this.sandboxes.get(ctx, id);
    const since = q.since ?? 0;
    if (q.waitMs) await this.ledger.wait(id, since, q.waitMs, q.signal);
    const r = this.ledger.list(id, since, q.limit ?? DEFAULT_LOG_LIMIT);
    return { entries: r.entries.map(toApiEntry), cursor: r.cursor };
  }

  /** The URLs of a port (host-routed and path-routed), its token and a signed URL. Needs no running sandbox. */
  portAccess(ctx: RequestContext, id: string, port: number, ttlMs = DEFAULT_URL_TTL_MS): PortAccess {
    const token = this.portToken(ctx, id);
    const st = this.load(id, false)!;
    const u = new URL(this.daemonUrl);
    const url = `${u.protocol}//${port}-${id}.localhost:${u.port || 80}/`;
    const exp = Math.floor((Date.now() + ttlMs) / 1000);
    return {
      port,
      public: isPublic(st.publicPorts, port),
      url,
      pathUrl: `${this.daemonUrl}/v1/sandboxes/${id}/ports/${port}/`,
      token,
      signedUrl: `${url}?${PORT_TOKEN_PARAM}=${signPort(token, id, port, exp)}`,
      expiresAt: new Date(exp * 1000).toISOString(),
    };
  }

  /**
   * The sandbox's port token (what `portAccess` also answers): the E2B front door hands it out as
   * E2B's `trafficAccessToken`, so one secret opens a sandbox's ports in both vocabularies.
   */
  portToken(ctx: RequestContext, id: string): string {
    this.sandboxes.get(ctx, id);
    let st = this.load(id, false);
    if (!st) {
      this.register(id, {}, false);
      st = this.load(id, false)!;
    }
    return st.token;
  }

  /** Whether `presented` is the port token of sandbox `id` (the code interpreter's E2B calls present it). */
  checkPortToken(id: string, presented: string | undefined): boolean {
    const st = this.load(id, false);
    return st !== undefined && presented !== undefined && safeEqual(presented, st.token);
  }

  // --- port forwarding (the proxy in src/network/ports.ts) ---------------------------------

  /**
   * Whether a request may reach `port` of sandbox `id`: the port is public, or it carries the
   * sandbox's token (header) or a signed value for this port that has not expired (query or cookie).
   */
  authorizePort(id: string, port: number, presented: { header?: string | undefined; signed?: string[] }): boolean {
    const st = this.load(id, false);
    if (!st) return false;
    if (isPublic(st.publicPorts, port)) return true;
    if (presented.header && safeEqual(presented.header, st.token)) return true;
    return (presented.signed ?? []).some((s) => verifyPort(st.token, id, port, s));
  }

  /** A stream to a port of a running sandbox (made reachable on first use). */
  async openPort(id: string, port: number, signal?: AbortSignal): Promise<Duplex> {
    const { rec, conn } = await this.sandboxes.use(SYSTEM_FOR_PORTS, id, 'reach its ports').catch(async (e: unknown) => {
      // Not running: the wake hook decides (today: a conflict naming the state).
      const rec = this.sandboxes.get(SYSTEM_FOR_PORTS, id);
      await this.wake(rec);
      throw e;
    });
    await this.wake(rec);
    // The sandbox's own backend (runtime/backends.ts): a gVisor sandbox has no relay to reach its ports through.
    const backend = backendOf(this.runtime, id);
    if (!this.runtime.connectPort || !backend.connectPort || !backend.capabilities.network.includes('gateway')) {
      throw new UnsupportedError(`the ${backend.kind} backend cannot expose sandbox ports here`, { backend: backend.kind, isolation: backend.capabilities.isolation });
    }
    let st = this.load(id);
    if (!st) {
      this.register(id, {});
      st = this.load(id)!;
    }
    if (st.gateway) await this.runtime.attachNetwork!(id, this.gatewaySpec()); // cheap when the relay runs; restarts a dead one
    else await this.ensureGateway(id, st, conn);
    return this.runtime.connectPort(id, port, signal);
  }

  /**
   * The gateway for a running sandbox that has none yet: its relay, and its resolver file, so that even
   * under `none` a lookup is answered (NXDOMAIN) at once instead of timing out toward the template's resolver.
   */
  private async ensureGateway(id: string, st: State, conn: AgentConnection): Promise<void> {
    await this.runtime.attachNetwork!(id, this.gatewaySpec());
    await this.writeResolver(conn);
    this.markGateway(id, st);
  }

  async listen(): Promise<void> {
    await this.gateway.listen();
  }

  async close(): Promise<void> {
    await this.gateway.close();
  }

  // --- state ---------------------------------------------------------------------------------

  /**
   * A sandbox's state, from memory or its row. Only live sandboxes are kept in memory (`cache`: the
   * create, adopt and change paths); views of an ended one read the row without reviving it for the gateway.
   */
  private load(id: string, cache = true): State | undefined {
    const hit = this.states.get(id);
    if (hit) return hit;
    const row = this.sql('SELECT * FROM sandbox_network WHERE sandbox_id = ?').get(id) as Row | undefined;
    if (!row) return undefined;
    const egress = JSON.parse(row.egress) as EgressPolicy;
    const st: State = {
      id,
      egress,
      publicPorts: JSON.parse(row.public_ports) as PublicPorts,
      token: row.token,
      gateway: row.gateway === 1,
      policy: compilePolicy(egress),
      names: new StandIns(),
      flows: new Set(),
    };
    if (cache) this.states.set(id, st);
    return st;
  }

  private markGateway(id: string, st: State): void {
    st.gateway = true;
    this.sql('UPDATE sandbox_network SET gateway = 1 WHERE sandbox_id = ?').run(id);
  }


  private async writeResolver(conn: AgentConnection): Promise<void> {
    // The sandbox may rewrite it; then it only loses its own DNS (UDP to anything else is dropped).
    await conn.writeFile('/etc/resolv.conf', Buffer.from(`# Capsule: DNS answered by the daemon from this sandbox's egress policy\nnameserver ${RESOLVER_ADDRESS}\noptions timeout:2 attempts:2\n`), {
      mode: 0o644,
    });
  }

  private view(st: State | undefined): SandboxNetwork {
    if (!st) return { egress: 'none', publicPorts: [], gateway: false };
    return { egress: st.egress, publicPorts: st.publicPorts === 'all' ? 'all' : [...st.publicPorts], gateway: st.gateway, ...(st.gateway ? { resolver: RESOLVER_ADDRESS } : {}) };
  }
}

/** The proxy's own lookups of a sandbox: it authorizes by port token, not by API key, so it sees every sandbox. */
const SYSTEM_FOR_PORTS = SYSTEM_CONTEXT;

function toApiEntry(e: LedgerEntry): NetworkLogEntry {
  const { sandboxId: _s, at, ...rest } = e;
  return { ...rest, at: new Date(at).toISOString() };
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

/** `<expiry seconds>.<mac>`: the sandbox's token signs sandbox, port and expiry. */
export function signPort(token: string, id: string, port: number, exp: number): string {
  const mac = crypto.createHmac('sha256', token).update(`${id}:${port}:${exp}`).digest('base64url').slice(0, 32);
  return `${exp}.${mac}`;
}

function verifyPort(token: string, id: string, port: number, value: string): boolean {
  const m = /^(\d{1,12})\.([A-Za-z0-9_-]{32})$/.exec(value);
  if (!m) return false;
  const exp = Number(m[1]);
  if (exp * 1000 < Date.now()) return false;
  return safeEqual(signPort(token, id, port, exp), value);
}

