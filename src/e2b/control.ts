/**
 * E2B's control plane under /e2b, as the `e2b` SDK 2.x calls it: create, get, list (v1 and v2 with
 * state and metadata filters and paging), kill, timeout, refresh, pause, resume, connect, metrics,
 * logs, network, snapshots (Capsule's filesystem snapshots) and fork (Capsule's fork with memory, on
 * backends that have memory snapshots). Each route parses E2B's request, calls the services with the caller's RequestContext
 * (from X-API-Key or Bearer, api/auth.ts), and answers in E2B's shape (mapping.ts).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Services } from '../api/services.js';
import { requestContext, type RequestContext } from '../auth/context.js';
import { ConflictError, NotFoundError, UnsupportedError } from '../errors/index.js';
import type { SandboxRecord } from '../sandboxes/store.js';
import {
  ConnectSandbox,
  ForkRequest,
  ListQuery,
  MetricsQuery,
  NewSandbox,
  PauseRequest,
  RefreshRequest,
  ResumeSandbox,
  SandboxIdParams,
  SnapshotListQuery,
  SnapshotRequest,
  TemplateIdParams,
  TimeoutRequest,
  NetworkUpdate,
  LogsQuery,
  LogsV2Query,
  type E2bState,
} from '../schemas/e2b/control.js';
import { SNAPSHOT_ID_RE, SnapshotName, type Snapshot } from '../schemas/snapshots.js';
import { capsuleTemplate, detail, domainOf, e2bState, egressOf, lifecycleOf, listed, logEntry, networkOf, sandboxAnswer, seconds, snapshotInfo } from './mapping.js';
import { pageOf, parseMetadataQuery } from './paging.js';
import { parse } from './parse.js';
import type { E2bTokens } from './tokens.js';

/** E2B's v2 list pages hold at most this many sandboxes (its default and maximum). */
const PAGE = 100;
/** E2B's log routes answer at most this many entries (its default and maximum). */
const LOG_PAGE = 1000;

function context(req: FastifyRequest): RequestContext {
  return requestContext(req.principal, String(req.id));
}

/** A sandbox E2B still knows (not ended); ended and unknown ones are 404, as E2B answers. */
function live(s: Services, ctx: RequestContext, id: string): SandboxRecord {
  const rec = s.sandboxes.get(ctx, id);
  if (e2bState(rec.state) === undefined) throw new NotFoundError(`sandbox ${id} not found`, { id });
  return rec;
}

export function controlRoutes(app: FastifyInstance, s: Services, tokens: E2bTokens): void {
  const gateway = () => s.sandboxes.runtimeInfo().capabilities.network.includes('gateway');
  // E2B's trafficAccessToken is the sandbox's port token: it opens getHost(port) URLs when traffic is not public.
  const answer = (ctx: RequestContext, rec: SandboxRecord, domain: string) => sandboxAnswer(rec, tokens, s.network.portToken(ctx, rec.id), domain);

  const create = async (req: FastifyRequest, reply: FastifyReply) => {
    const body = parse(NewSandbox, req.body, 'body');
    if (body.mcp !== undefined && body.mcp !== null) throw new UnsupportedError('MCP gateways in sandboxes are not supported by Capsule');
    const net = body.network as Record<string, unknown> | undefined;
    for (const k of ['maskRequestHost', 'httpsPorts', 'egressProxy'] as const) {
      if (net?.[k] !== undefined && net[k] !== null && !(Array.isArray(net[k]) && net[k].length === 0)) {
        throw new UnsupportedError(`network.${k} is not supported by Capsule (its port proxy speaks plain HTTP to the sandbox and routes by <port>-<id>.localhost)`, { option: k });
      }
    }
    const ac = new AbortController();
    reply.raw.once('close', () => {
      if (!reply.raw.writableFinished) ac.abort(new Error('the client closed the connection'));
    });
    const lifecycle = lifecycleOf(body);
    const network = networkOf(body, gateway());
    const ctx = context(req);
    // E2B boots a snapshot by naming it as the template: that is a fork of the filesystem snapshot.
    const snap = snapshotFor(s, ctx, body.templateID.trim());
    const rec = await s.sandboxes.create(ctx, {
      ...(snap ? { snapshot: snap.id } : { template: capsuleTemplate(body.templateID) }),
      timeoutMs: body.timeout !== undefined ? seconds(body.timeout) : undefined,
      envs: body.envVars,
      metadata: body.metadata,
      ...(lifecycle ? { lifecycle } : {}),
      ...(network ? { network } : {}),
      ...(body.volumeMounts ? { volumes: body.volumeMounts.map((v) => ({ name: v.name, path: v.path })) } : {}),
      signal: ac.signal,
    });
    return reply.code(201).send(answer(ctx, rec, domainOf(req.headers.host)));
  };
  app.post('/sandboxes', create);
  app.post('/v2/sandboxes', create);

  // v1: running sandboxes, all at once.
  app.get('/sandboxes', async (req) => {
    const q = parse(ListQuery.pick({ metadata: true }), req.query, 'query');
    return select(s, context(req), { metadata: parseMetadataQuery(q.metadata), states: ['running'] }).map(listed);
  });

  // v2: newest first (or oldest with order=asc), pages of `limit` with the next page's token in X-Next-Token.
  app.get('/v2/sandboxes', async (req, reply) => {
    const q = parse(ListQuery, req.query, 'query');
    const all = select(s, context(req), {
      metadata: parseMetadataQuery(q.metadata),
      states: q.state ?? ['running', 'paused'],
      startedAfter: q.startedAfter !== undefined ? Date.parse(q.startedAfter) : undefined,
      template: q.template !== undefined ? capsuleTemplate(q.template) : undefined,
    });
    const { page, next } = pageOf(all, { asc: q.order === 'asc', limit: q.limit ?? PAGE, nextToken: q.nextToken });
    if (next !== undefined) void reply.header('x-next-token', next);
    void reply.header('x-total-running', String(all.filter((r) => e2bState(r.state) === 'running').length));
    return page.map(listed);
  });

  app.get('/sandboxes/:sandboxID', async (req) => {
    const { sandboxID } = parse(SandboxIdParams, req.params, 'path parameter');
    const ctx = context(req);
    return detail(live(s, ctx, sandboxID), tokens, domainOf(req.headers.host), s.network.get(ctx, sandboxID));
  });

  app.delete('/sandboxes/:sandboxID', async (req, reply) => {
    const { sandboxID } = parse(SandboxIdParams, req.params, 'path parameter');
    const ctx = context(req);
    live(s, ctx, sandboxID);
    await s.sandboxes.kill(ctx, sandboxID);
    return reply.code(204).send();
  });

  app.post('/sandboxes/:sandboxID/timeout', async (req, reply) => {
    const { sandboxID } = parse(SandboxIdParams, req.params, 'path parameter');
    const body = parse(TimeoutRequest, req.body, 'body');
    const ctx = context(req);
    live(s, ctx, sandboxID);
    s.sandboxes.setTimeout(ctx, sandboxID, seconds(body.timeout));
    return reply.code(204).send();
  });

  // Refresh only extends: the new end is the later of the current one and now + duration.
  app.post('/sandboxes/:sandboxID/refreshes', async (req, reply) => {
    const { sandboxID } = parse(SandboxIdParams, req.params, 'path parameter');
    const body = parse(RefreshRequest, req.body, 'body');
    const ctx = context(req);
    const rec = live(s, ctx, sandboxID);
    const ms = body.duration !== undefined ? seconds(body.duration) : rec.timeoutMs;
    if (rec.state === 'running' && Date.now() + ms > rec.expiresAt) s.sandboxes.setTimeout(ctx, sandboxID, ms);
    return reply.code(204).send();
  });

  // memory: false keeps only the files: that is Capsule's stop.
  app.post('/sandboxes/:sandboxID/pause', async (req, reply) => {
    const { sandboxID } = parse(SandboxIdParams, req.params, 'path parameter');
    const body = parse(PauseRequest, req.body, 'body');
    const ctx = context(req);
    const rec = live(s, ctx, sandboxID);
    if (e2bState(rec.state) === 'paused') throw new ConflictError(`sandbox ${sandboxID} is already paused`, { state: rec.state });
    if (body.memory === false) await s.sandboxes.stop(ctx, sandboxID);
    else await s.sandboxes.pause(ctx, sandboxID);
    return reply.code(204).send();
  });

  // Deprecated in E2B: resume a paused sandbox; a running one is a conflict.
  app.post('/sandboxes/:sandboxID/resume', async (req, reply) => {
    const { sandboxID } = parse(SandboxIdParams, req.params, 'path parameter');
    const body = parse(ResumeSandbox, req.body, 'body');
    const ctx = context(req);
    const rec = live(s, ctx, sandboxID);
    if (e2bState(rec.state) === 'running') throw new ConflictError(`sandbox ${sandboxID} is already running`, { state: rec.state });
    return reply.code(201).send(answer(ctx, await wake(s, ctx, rec, body.timeout), domainOf(req.headers.host)));
  });

  // Connect: 200 for a running sandbox (its lifetime only extended), 201 for one it resumed.
  const connect = async (req: FastifyRequest, reply: FastifyReply) => {
    const { sandboxID } = parse(SandboxIdParams, req.params, 'path parameter');
    const body = parse(ConnectSandbox, req.body, 'body');
    const ctx = context(req);
    const rec = live(s, ctx, sandboxID);
    if (e2bState(rec.state) === 'running') {
      if (body.timeout !== undefined && rec.state === 'running' && Date.now() + seconds(body.timeout) > rec.expiresAt) {
        s.sandboxes.setTimeout(ctx, sandboxID, seconds(body.timeout));
      }
      return reply.code(200).send(answer(ctx, s.sandboxes.get(ctx, sandboxID), domainOf(req.headers.host)));
    }
    return reply.code(201).send(answer(ctx, await wake(s, ctx, rec, body.timeout), domainOf(req.headers.host)));
  };
  app.post('/sandboxes/:sandboxID/connect', connect);
  app.post('/v2/sandboxes/:sandboxID/connect', connect);

  app.get('/sandboxes/:sandboxID/metrics', async (req) => {
    const { sandboxID } = parse(SandboxIdParams, req.params, 'path parameter');
    const q = parse(MetricsQuery, req.query, 'query');
    const ctx = context(req);
    live(s, ctx, sandboxID);
    const { metrics } = s.metrics.get(ctx, sandboxID, {
      start: q.start !== undefined ? new Date(seconds(q.start)) : undefined,
      end: q.end !== undefined ? new Date(seconds(q.end)) : undefined,
    });
    return metrics.map((m) => ({
      timestamp: m.timestamp,
      timestampUnix: Math.floor(Date.parse(m.timestamp) / 1000),
      cpuCount: m.cpuCount,
      cpuUsedPct: m.cpuUsedPct,
      memUsed: m.memUsedBytes,
      memTotal: m.memLimitBytes,
      memCache: 0,
      diskUsed: m.diskUsedBytes,
      diskTotal: m.diskQuotaBytes,
    }));
  });

  // The sandbox log (src/sandboxes/events.ts): lifecycle and command events, as E2B's log entries.
  app.get('/sandboxes/:sandboxID/logs', async (req) => {
    const { sandboxID } = parse(SandboxIdParams, req.params, 'path parameter');
    const q = parse(LogsQuery, req.query, 'query');
    const ctx = context(req);
    live(s, ctx, sandboxID);
    const { entries } = s.logs.list(ctx, sandboxID, { start: q.start, limit: q.limit ?? LOG_PAGE });
    return { logs: entries.map((e) => ({ timestamp: e.at, line: e.message })), logEntries: entries.map(logEntry) };
  });
  app.get('/v2/sandboxes/:sandboxID/logs', async (req) => {
    const { sandboxID } = parse(SandboxIdParams, req.params, 'path parameter');
    const q = parse(LogsV2Query, req.query, 'query');
    const ctx = context(req);
    live(s, ctx, sandboxID);
    const { entries } = s.logs.list(ctx, sandboxID, {
      start: q.cursor,
      limit: q.limit ?? LOG_PAGE,
      level: q.level,
      search: q.search,
      order: q.direction === 'backward' ? 'desc' : 'asc',
    });
    return { logs: entries.map(logEntry) };
  });

  app.put('/sandboxes/:sandboxID/network', async (req, reply) => {
    const { sandboxID } = parse(SandboxIdParams, req.params, 'path parameter');
    const body = parse(NetworkUpdate, req.body, 'body');
    const ctx = context(req);
    live(s, ctx, sandboxID);
    // E2B's update replaces the egress rules only (its body has no allowPublicTraffic): public ports stay.
    const egress = egressOf({ allow_internet_access: body.allow_internet_access, network: body }, true);
    await s.network.set(ctx, sandboxID, { egress: egress ?? 'none' });
    return reply.code(204).send();
  });

  // Snapshots are Capsule's filesystem snapshots (src/snapshots/service.ts); Sandbox.create(snapshotID) forks one.
  app.post('/sandboxes/:sandboxID/snapshots', async (req, reply) => {
    const { sandboxID } = parse(SandboxIdParams, req.params, 'path parameter');
    const body = parse(SnapshotRequest, req.body ?? {}, 'body');
    const ctx = context(req);
    live(s, ctx, sandboxID);
    const snap = await s.snapshots.take(ctx, sandboxID, { name: body.name });
    return reply.code(201).send(snapshotInfo(snap));
  });

  // Newest first, in pages of `limit` with the next page's token in X-Next-Token, as sandboxes are listed.
  app.get('/snapshots', async (req, reply) => {
    const q = parse(SnapshotListQuery, req.query, 'query');
    const all = s.snapshots
      .list(context(req), { sandboxId: q.sandboxID })
      .filter((snap) => q.name === undefined || snap.id === q.name || snap.name === q.name)
      .map((snap) => ({ snap, id: snap.id, createdAt: Date.parse(snap.createdAt) }));
    const { page, next } = pageOf(all, { limit: q.limit ?? PAGE, nextToken: q.nextToken });
    if (next !== undefined) void reply.header('x-next-token', next);
    return page.map((p) => snapshotInfo(p.snap));
  });

  // The SDK's Sandbox.deleteSnapshot deletes "the template" (E2B's snapshots are templates). Only
  // snapshots are deleted here; 409 while a sandbox started from it lives, as the native API answers.
  app.delete('/templates/:templateID', async (req, reply) => {
    const { templateID } = parse(TemplateIdParams, req.params, 'path parameter');
    const ctx = context(req);
    const snap = snapshotFor(s, ctx, templateID);
    if (!snap) throw new NotFoundError(`snapshot ${templateID} not found (templates are not deleted through the E2B API: use capsule templates)`, { snapshot: templateID });
    await s.snapshots.remove(ctx, snap.id);
    return reply.code(204).send();
  });

  // E2B's fork carries the running sandbox's memory and processes into the forks: Capsule's fork with
  // memory (src/snapshots/service.ts, ADR 0018), where the backend has memory snapshots (runc + CRIU 4);
  // elsewhere 422 with the reason, since a fork that silently lost its processes would not be one. E2B
  // reports each fork's outcome on its own; Capsule's fork is all or nothing (a failed fork kills the
  // others and the request fails), so every entry here carries a sandbox.
  app.post('/sandboxes/:sandboxID/fork', async (req, reply) => {
    const { sandboxID } = parse(SandboxIdParams, req.params, 'path parameter');
    const body = parse(ForkRequest, req.body ?? {}, 'body');
    const ctx = context(req);
    live(s, ctx, sandboxID);
    const timeoutMs = seconds(body.timeout ?? 15);
    const { sandboxes } = await s.snapshots.fork(ctx, sandboxID, { count: body.count ?? 1, memory: true });
    const domain = domainOf(req.headers.host);
    return reply.code(201).send(sandboxes.map((rec) => ({ sandbox: answer(ctx, s.sandboxes.setTimeout(ctx, rec.id, timeoutMs), domain) })));
  });
}

/**
 * The caller's snapshot that an E2B template id names, if any: a snapshot id, or the name of one of
 * the caller's snapshots. A snapshot id that the caller cannot see is 404 (it is never a template).
 */
function snapshotFor(s: Services, ctx: RequestContext, ref: string): Snapshot | undefined {
  if (SNAPSHOT_ID_RE.test(ref)) return s.snapshots.get(ctx, ref);
  if (!SnapshotName.safeParse(ref).success) return undefined;
  try {
    return s.snapshots.get(ctx, ref);
  } catch (err) {
    if (err instanceof NotFoundError) return undefined;
    throw err;
  }
}

/** Resume a paused sandbox or start a stopped one, with a new lifetime when one is given. */
async function wake(s: Services, ctx: RequestContext, rec: SandboxRecord, timeout: number | undefined): Promise<SandboxRecord> {
  const opts = timeout !== undefined ? { timeoutMs: seconds(timeout) } : {};
  if (rec.state === 'stopped' || rec.state === 'stopping') return s.sandboxes.start(ctx, rec.id, opts);
  return s.sandboxes.resume(ctx, rec.id, opts);
}

interface Selection {
  metadata: Record<string, string>;
  states: E2bState[];
  startedAfter?: number | undefined;
  template?: string | undefined;
}

/** The caller's live sandboxes that match, through the service's own filter (visibility, metadata). */
function select(s: Services, ctx: RequestContext, sel: Selection): SandboxRecord[] {
  return s.sandboxes.list(ctx, { metadata: sel.metadata }).filter((r) => {
    const st = e2bState(r.state);
    if (st === undefined || !sel.states.includes(st)) return false;
    if (sel.startedAfter !== undefined && r.createdAt < sel.startedAfter) return false;
    if (sel.template !== undefined && r.template !== sel.template) return false;
    return true;
  });
}
