/**
 * Capsule's concepts in E2B's words: sandbox records as E2B's Sandbox / SandboxDetail /
 * ListedSandbox, E2B's template names and network settings as Capsule's, states and seconds.
 * Pure functions; the routes call the services and these.
 */
import type { SandboxRecord } from '../sandboxes/store.js';
import type { SandboxState } from '../sandboxes/lifecycle.js';
import type { LifecycleInput } from '../sandboxes/policy.js';
import type { EgressPolicy, NetworkConfig, SandboxNetwork } from '../schemas/network.js';
import type { E2bSandbox, E2bState, ListedSandbox, NewSandbox, SandboxDetail, SnapshotInfo } from '../schemas/e2b/control.js';
import type { Snapshot } from '../schemas/snapshots.js';
import type { SandboxLogEntry } from '../schemas/logs.js';
import { InvalidArgumentError } from '../errors/index.js';
import type { E2bTokens } from './tokens.js';

/**
 * The envd version this adapter reports. The SDK turns features on by version: 0.4.0 a default
 * user, 0.5.2 closeStdin, 0.5.7 streamed octet-stream uploads, 0.6.2 file metadata (X-Metadata-*
 * upload headers, `metadata` in entries; the only thing the SDK gates on 0.6.2). 0.6.3 (entries in
 * watch events) and 0.6.4 (network mounts) are not implemented, so the SDK refuses those options itself.
 */
export const ENVD_VERSION = '0.6.2';

/** What the adapter reports as the client: no E2B cluster client exists here. */
const CLIENT_ID = 'capsule';

/** E2B's template names onto Capsule's. */
export function capsuleTemplate(e2bName: string): string {
  const name = e2bName.trim();
  if (name === 'code-interpreter-v1' || name === 'code-interpreter') return 'python';
  return name;
}

/** A Capsule state as E2B's two; undefined for ended sandboxes (E2B no longer knows them). */
export function e2bState(state: SandboxState): E2bState | undefined {
  // No default: a new state must be placed here, or it would vanish from E2B's views (a compile error instead).
  switch (state) {
    case 'creating':
    case 'running':
    case 'resuming':
    case 'starting':
    case 'snapshotting':
    case 'restoring':
      return 'running';
    case 'pausing':
    case 'paused':
    case 'stopping':
    case 'stopped':
    case 'hibernating':
    case 'hibernated':
      return 'paused';
    case 'killed':
    case 'expired':
    case 'failed':
      return undefined;
  }
}

export function seconds(s: number): number {
  return s * 1000;
}

/**
 * The domain E2B's SDK builds sandbox host names from (`getHost(port)` is `<port>-<id>.<domain>`):
 * `localhost:<the daemon's port>`, which the port proxy serves. Without one the SDK would fall back
 * to E2B's own cloud domain and send the sandbox's host names, and any request to them, off the machine.
 */
export function domainOf(host: string | undefined): string {
  const port = /:(\d{1,5})$/.exec(host ?? '')?.[1];
  return port ? `localhost:${port}` : 'localhost';
}

/** `trafficToken`: the sandbox's port token (NetworkService.portToken), E2B's trafficAccessToken. */
export function sandboxAnswer(rec: SandboxRecord, tokens: E2bTokens, trafficToken: string, domain: string): E2bSandbox {
  return {
    templateID: rec.template,
    sandboxID: rec.id,
    alias: rec.template,
    clientID: CLIENT_ID,
    envdVersion: ENVD_VERSION,
    envdAccessToken: tokens.envdToken(rec.id),
    trafficAccessToken: trafficToken,
    domain,
  };
}

export function listed(rec: SandboxRecord): ListedSandbox {
  return {
    templateID: rec.template,
    alias: rec.template,
    sandboxID: rec.id,
    clientID: CLIENT_ID,
    startedAt: new Date(rec.createdAt).toISOString(),
    endAt: new Date(rec.expiresAt).toISOString(),
    cpuCount: Math.max(1, Math.ceil(rec.resources.cpus)),
    memoryMB: rec.resources.memoryMb,
    diskSizeMB: rec.resources.diskMb ?? 0,
    metadata: rec.metadata,
    state: e2bState(rec.state) ?? 'paused',
    envdVersion: ENVD_VERSION,
    volumeMounts: rec.volumes.map((v) => ({ name: v.name, path: v.path })),
  };
}

export function detail(rec: SandboxRecord, tokens: E2bTokens, domain: string, net: SandboxNetwork): SandboxDetail {
  return {
    ...listed(rec),
    envdAccessToken: tokens.envdToken(rec.id),
    ...networkInfo(net),
    domain,
    lifecycle: { autoResume: rec.lifecycle.autoResume, onTimeout: rec.lifecycle.onTimeout === 'kill' ? 'kill' : 'pause' },
  };
}

/**
 * A sandbox's network as E2B's getInfo() reports it: the internet switch, allow/deny lists (an allow list
 * without `*` is E2B's "deny 0.0.0.0/0 except these") and whether every port is public.
 */
export function networkInfo(n: SandboxNetwork): Pick<SandboxDetail, 'allowInternetAccess' | 'network'> {
  const allowPublicTraffic = n.publicPorts === 'all';
  if (n.egress === 'none') return { allowInternetAccess: false, network: { allowPublicTraffic, denyOut: ['0.0.0.0/0'] } };
  if (n.egress === 'all') return { allowInternetAccess: true, network: { allowPublicTraffic } };
  const open = n.egress.allow.includes('*');
  const allowOut = n.egress.allow.filter((r) => r !== '*');
  const denyOut = open ? (n.egress.deny ?? []) : ['0.0.0.0/0', ...(n.egress.deny ?? [])];
  return {
    allowInternetAccess: true,
    network: { allowPublicTraffic, ...(allowOut.length ? { allowOut } : {}), ...(denyOut.length ? { denyOut } : {}) },
  };
}

/** autoPause and autoResume as Capsule's lifecycle policy (a filesystem-only auto-pause is a stop). */
export function lifecycleOf(body: NewSandbox): LifecycleInput | undefined {
  const autoResume = body.autoResume?.enabled;
  if (autoResume === true && body.autoPause !== true) throw new InvalidArgumentError('autoResume needs autoPause: a sandbox that is killed at its timeout cannot be resumed');
  if (body.autoPause !== true) return autoResume === undefined ? undefined : { autoResume };
  return { onTimeout: body.autoPause && body.autoPauseMemory === false ? 'stop' : 'pause', ...(autoResume !== undefined ? { autoResume } : {}) };
}

/**
 * E2B's network settings as Capsule's: the internet switch and allow/deny lists as an egress policy
 * (egressOf), and allowPublicTraffic as the public ports: true (E2B's default) is every port, false none,
 * so each getHost(port) URL then needs the trafficAccessToken (Capsule's port token). `gateway`: whether
 * this daemon can give sandboxes egress and ports at all; without it the defaults quietly stay off, and
 * an explicit ask is refused by the service.
 */
export function networkOf(body: NewSandbox, gateway: boolean): NetworkConfig | undefined {
  const egress = egressOf(body, gateway);
  const allowPublic = body.network?.allowPublicTraffic;
  const publicPorts = allowPublic === false ? [] : allowPublic === true || gateway ? ('all' as const) : undefined;
  if (egress === undefined && publicPorts === undefined) return undefined;
  return { ...(egress !== undefined ? { egress } : {}), ...(publicPorts !== undefined ? { publicPorts } : {}) };
}

/**
 * E2B's internet switch and allow/deny lists as an egress policy. E2B lets allowOut win over denyOut
 * and treats denyOut 0.0.0.0/0 as "only what allowOut names"; Capsule's deny rules win, so that case
 * becomes an allow list alone. `gateway`: whether this daemon can enforce egress at all; without it
 * the default (internet on) quietly becomes none, and an explicit ask is refused by the service.
 */
export function egressOf(body: Pick<NewSandbox, 'allow_internet_access' | 'network'>, gateway: boolean): EgressPolicy | undefined {
  const internet = body.allow_internet_access;
  const allowOut = body.network?.allowOut ?? [];
  const denyOut = body.network?.denyOut ?? [];
  const explicit = internet !== undefined || allowOut.length > 0 || denyOut.length > 0;
  if (!explicit && !gateway) return undefined;
  const denyAll = internet === false || denyOut.some((r) => r === '0.0.0.0/0' || r === '0.0.0.0/0:*');
  let egress: EgressPolicy;
  if (denyAll) {
    egress = allowOut.length > 0 ? { allow: allowOut } : 'none';
  } else {
    const deny = denyOut.filter((r) => !allowOut.includes(r));
    egress = deny.length > 0 ? { allow: ['*', ...allowOut], deny } : 'all';
  }
  return egress;
}

/**
 * A Capsule snapshot as E2B's SnapshotInfo. E2B's ids are template ids with a tag; Capsule's snapshot
 * id (snap-…) is what Sandbox.create() gets back here, and the name, when there is one, works too.
 */
export function snapshotInfo(snap: Snapshot): SnapshotInfo {
  return { snapshotID: snap.id, names: snap.name !== undefined ? [snap.name] : [] };
}

/** A sandbox log entry (src/sandboxes/events.ts) as E2B's SandboxLogEntry; what happened is also a field. */
export function logEntry(e: SandboxLogEntry): { timestamp: string; level: SandboxLogEntry['level']; message: string; fields: Record<string, string> } {
  return { timestamp: e.at, level: e.level, message: e.message, fields: { event: e.event, ...e.fields } };
}
