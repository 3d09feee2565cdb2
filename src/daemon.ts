/**
 * Composition root: builds every service from a DaemonConfig, recovers state
 * left by an earlier run, and serves the HTTP API. Nothing here is global, so
 * tests can run several daemons in one process.
 */
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { DEFAULT_METRICS_INTERVAL_MS, METRICS_HISTORY, dataPaths, splitPoolKey, type DaemonConfig } from './config/index.js';
import { openDb } from './store/db.js';
import { ensureHostReady } from './runtime/doctor.js';
import { openBackends } from './runtime/open-backends.js';
import { TemplateService } from './templates/service.js';
import type { BuildProgress } from './templates/types.js';
import { connectAgent } from './agent/client.js';
import { SandboxStore } from './sandboxes/store.js';
import { SandboxManager, type AgentConnector } from './sandboxes/manager.js';
import { WarmPool } from './sandboxes/pool.js';
import { CommandService } from './sandboxes/commands.js';
import { CodeInterpreterService } from './interpreter/service.js';
import { ProcessJournal } from './sandboxes/process-journal.js';
import { SandboxHistory } from './sandboxes/history.js';
import { SandboxEventLog } from './sandboxes/events.js';
import { FileService } from './sandboxes/files.js';
import { PtyService } from './sandboxes/pty.js';
import { WatchService } from './sandboxes/watch.js';
import { MetricsService } from './sandboxes/metrics.js';
import { PrometheusTelemetry } from './telemetry/prometheus.js';
import { buildServer } from './api/server.js';
import type { Services } from './api/services.js';
import { ConflictError, RuntimeError } from './errors/index.js';
import { KeyStore } from './auth/keys.js';
import { KeyService } from './auth/key-service.js';
import { TemplateCatalog } from './templates/catalog.js';
import { TemplateBuilder } from './templates/builder.js';
import { packageHosts } from './templates/package-hosts.js';
import { BuildJobs } from './templates/jobs.js';
import { BlobStore } from './templates/blobs.js';
import { ownerKey, UserTemplates } from './templates/user-templates.js';
import { LayerStore } from './layers/store.js';
import { LIVE_STATES } from './sandboxes/lifecycle.js';
import { RateLimiter } from './auth/rate-limit.js';
import { VolumeStore } from './volumes/store.js';
import { VolumeService } from './volumes/service.js';
import { SnapshotStore } from './snapshots/store.js';
import { SnapshotService } from './snapshots/service.js';
import { NetworkService } from './network/service.js';
import { hostEnvironment, simulatedEnvironment } from './network/environment.js';
import { tuneHeap } from './heap.js';
import { tuneJit } from './jit.js';

export interface Daemon {
  url: string;
  services: Services;
  close(): Promise<void>;
}

const here = path.dirname(fileURLToPath(import.meta.url));
/** Built by scripts/build-agent.mjs next to the compiled sources (dist/agent). */
export const AGENT_BUILD_PATH = path.resolve(here, '..', 'agent', 'capsule-agent');

export function packageVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.resolve(here, '..', '..', 'package.json'), 'utf8')) as { version?: string };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

export interface StartOptions {
  logger?: Logger;
  /**
   * Built-in templates to have built before the daemon listens (npm start:
   * the default one), so the first create does not wait for debootstrap.
   * A failed build is logged and left for the first create to retry.
   */
  prebuild?: string[];
  onPrebuildProgress?: (template: string, p: BuildProgress) => void;
}

export async function startDaemon(config: DaemonConfig, opts: StartOptions = {}): Promise<Daemon> {
  tuneHeap();
  tuneJit();
  const log = opts.logger ?? pino({ level: config.logLevel, base: undefined }, pino.destination(2));
  const paths = dataPaths(config.dataDir);
  for (const dir of [config.dataDir, paths.templates, paths.sandboxes, paths.bin]) fs.mkdirSync(dir, { recursive: true });
  // The runtime sets up each sandbox's mounts as its mapped root (an unprivileged host uid), which must be
  // able to traverse the data directory to reach the agent and the template; it can list nothing (o+x only).
  for (const dir of [config.dataDir, paths.sandboxes, paths.bin]) {
    const mode = fs.statSync(dir).mode & 0o777;
    if ((mode & 0o001) === 0) fs.chmodSync(dir, mode | 0o001);
  }
  const releaseLock = takeLock(path.join(config.dataDir, 'daemon.pid'));
  try {
    await ensureHostReady(config.runtime, { scratchDir: config.dataDir, dataDir: config.dataDir, idMapBase: config.idMapBase });
    const agentBinary = installAgent(paths.bin);
    const db = openDb(paths.db);
    // A replaced template tree is deleted once no sandbox sits on it and no user template builds on it;
    // until the driver and the catalog exist, assume something does.
    let lowerInUse: (rootfs: string, info: { name: string; builtAt: number | undefined }) => boolean = () => true;
    const inUse = (rootfs: string, info: { name: string; builtAt: number | undefined }) => lowerInUse(rootfs, info);
    // Gauges are read at scrape time from services made below.
    let scrape: { store?: SandboxStore; sandboxes?: SandboxManager } = {};
    const prometheus = new PrometheusTelemetry({
      sandboxesByState: () => scrape.store?.countByState() ?? {},
      pools: () => scrape.sandboxes?.poolStats() ?? [],
    });
    const templates = new TemplateService({ db, paths, idMapBase: config.idMapBase, logger: log, inUse, onBuilt: (name, outcome) => prometheus.templateBuilt(name, outcome) });
    await templates.recover();
    const layers = new LayerStore(db, paths.layers);
    await layers.recover();
    const userTemplates = new UserTemplates(db);
    userTemplates.recover();
    const jobs = new BuildJobs(db, paths.buildLogs);
    jobs.recover();
    const blobs = new BlobStore(paths.blobs);
    const store = new SandboxStore(db);
    // Every isolation kind this host has (runtime/backends.ts); a restarted daemon hands each sandbox
    // back to the backend its row names.
    const { backends: runtime } = await openBackends(config, { paths, agentBinary, log, recorded: (id) => store.get(id)?.runtime });
    log.info({ backends: runtime.info().map((b) => (b.available ? `${b.isolation}: ${b.name}` : `${b.isolation}: no (${b.reason})`)) }, 'runtime backends');
    lowerInUse = (rootfs, info) => runtime.templateInUse(rootfs) || catalog.referencesBuiltin(info.name, info.builtAt);
    // Unknown template names in the pool settings fail the start, with the list of known ones.
    for (const [key, size] of Object.entries(config.pools)) if (size > 0) templates.get(splitPoolKey(key).template);
    // Every agent connection the daemon makes gets a wide send buffer (uploads; see tuneAgentSocket).
    const connector: AgentConnector = async (endpoint, opts) => {
      const conn = await connectAgent(endpoint, opts);
      const fd = conn.socketFd?.();
      if (fd !== undefined) {
        runtime.tuneAgentSocket(fd).catch((err: unknown) => log.debug({ err }, 'could not widen an agent socket send buffer'));
      }
      return conn;
    };
    const pool = new WarmPool(config.pools, {
      runtime,
      templates,
      connectAgent: connector,
      defaultResources: config.defaultResources,
      buildTemplates: config.buildPoolTemplates,
      log,
    });
    let builder: TemplateBuilder;
    const catalog = new TemplateCatalog({
      builtins: templates,
      users: userTemplates,
      layers,
      blobs,
      builder: (builder = new TemplateBuilder({
        // Build steps run in containers whatever the default isolation (the builder asks for that backend).
        runtime,
        connectAgent: connector,
        layers,
        blobs,
        idMapBase: config.idMapBase,
        idMapSize: config.idMapSize,
        log,
        resources: { cpus: 1, memoryMb: 2048, pids: 1024, diskMb: 16 * 1024 },
      })),
      jobs,
      sandboxesUsing: (owner, name) =>
        store.listByStates(LIVE_STATES).filter((r) => (r.template === name && ownerKey(r.owner) === owner) || r.template === `${owner}/${name}`).length,
      treeInUse: (tree) => runtime.templateInUse(tree),
      idMapBase: config.idMapBase,
      idMapSize: config.idMapSize,
    });
    const sandboxes = new SandboxManager(config, store, runtime, catalog, connector, log, pool);
    sandboxes.setTelemetry(prometheus);
    scrape = { store, sandboxes };
    const network = new NetworkService(
      db,
      runtime,
      sandboxes,
      config.netTestInternet ? simulatedEnvironment(config.netTestInternet) : hostEnvironment(),
      paths.gatewaySocket,
      log,
    );
    if (config.netTestInternet) log.warn('networking uses a SIMULATED internet (CAPSULE_NET_TEST_INTERNET): for tests only');
    await network.listen();
    sandboxes.setNetworking(network);
    // Template builds' apt and npm steps: egress to the host's mirrors and the npm registry only.
    builder!.useNetworking(network, () => packageHosts());
    const journal = new ProcessJournal(store, { onError: (err) => log.error({ err }, 'writing process rows failed') });
    const logs = new SandboxEventLog(db, sandboxes, { onError: (err) => log.error({ err }, 'writing sandbox log entries failed') });
    logs.attach(store);
    // Looked at every tenth of the retention (between a second and ten minutes), so a short one holds.
    const history = new SandboxHistory(db, {
      retentionMs: config.historyRetentionMs,
      everyMs: Math.min(10 * 60_000, Math.max(1000, config.historyRetentionMs / 10)),
    });
    history.onPurged((ids) => network.ledger.forget(ids));
    history.onPass((before) => jobs.purgeFinished(before));
    sandboxes.setHistory(history);
    const commands = new CommandService(sandboxes, journal, prometheus, logs);
    const metrics = new MetricsService(sandboxes, store, runtime, config.metricsIntervalMs ?? DEFAULT_METRICS_INTERVAL_MS, METRICS_HISTORY, (err, id) =>
      log.debug({ err, id }, 'sampling sandbox metrics failed'),
    );
    const files = new FileService(sandboxes);
    const code = new CodeInterpreterService(sandboxes);
    const volumes = new VolumeService(new VolumeStore(db), store, runtime, config.maxDiskMb, log);
    sandboxes.setVolumes(volumes);
    const snapshots = new SnapshotService({
      store: new SnapshotStore(db),
      sandboxStore: store,
      sandboxes,
      runtime,
      layers,
      chainRefs: (ids) => catalog.chainRefs(ids),
      prune: () => catalog.prune(),
      log,
    });
    sandboxes.setSnapshots(snapshots);
    catalog.addLayerHolder(() => snapshots.heldLayers());
    const keyStore = config.auth ? new KeyStore(db) : null;
    if (keyStore) bootstrapAdminKey(keyStore, paths.adminKey, log);
    else log.warn('authentication is OFF (--no-auth): anyone who can reach the port controls every sandbox');
    const services: Services = {
      version: packageVersion(),
      sandboxes,
      commands,
      files,
      code,
      volumes,
      snapshots,
      templates: catalog,
      keys: new KeyService(keyStore),
      keyStore,
      limiter: new RateLimiter(),
      pty: new PtyService(sandboxes, commands),
      watches: new WatchService(sandboxes),
      metrics,
      prometheus,
      metricsOpen: config.metricsOpen === true,
      network,
      logs,
      dataDir: config.dataDir,
    };

    const recovered = await sandboxes.recover();
    if (recovered.adopted.length || recovered.kept.length || recovered.ended.length || recovered.cleaned.length) log.info(recovered, 'recovered state from the last run');
    sandboxes.startReaper();
    metrics.start();
    const prune = () => {
      void templates.pruneOld(inUse).catch((err: unknown) => log.warn({ err }, 'pruning replaced template trees failed'));
      void catalog.prune().catch((err: unknown) => log.warn({ err }, 'pruning unused layers failed'));
      void blobs.prune().catch((err: unknown) => log.warn({ err }, 'pruning old uploads failed'));
    };
    prune();
    sandboxes.onDestroyed(prune);

    for (const name of opts.prebuild ?? []) {
      await templates.ensure(name, (p) => opts.onPrebuildProgress?.(name, p)).catch((err: unknown) => {
        log.error({ err, template: name }, 'building the template before serving failed; the first sandbox of it will try again');
      });
    }

    const app = buildServer(services, log);
    await app.listen({ host: config.host, port: config.port });
    // After recover() (pooled containers of an earlier run are orphans it has just removed) and once listening.
    pool.start();
    const addr = app.server.address();
    const port = typeof addr === 'object' && addr ? addr.port : config.port;
    const host = config.host.includes(':') ? `[${config.host}]` : config.host;
    network.setDaemonAddress(config.host, port, `http://${host}:${port}`);
    return {
      url: `http://${host}:${port}`,
      services,
      close: async () => {
        await app.close();
        await code.close();
        await catalog.close();
        await metrics.close();
        // Pooled sandboxes belong to no one: unlike claimed ones they do not outlive the daemon.
        await pool.close();
        await sandboxes.close();
        await network.close();
        journal.close();
        logs.close();
        await runtime.close();
        db.close();
        releaseLock();
      },
    };
  } catch (err) {
    releaseLock();
    throw err;
  }
}

/**
 * A fresh install has no keys: make one admin key and leave it where only root
 * can read it, so `capsule` on this machine works at once (the CLI reads it
 * when CAPSULE_API_KEY is unset) and remote callers need a key from the start.
 */
function bootstrapAdminKey(keys: KeyStore, file: string, log: Logger): void {
  // Any live admin key means setup is done (an operator may have removed the file on purpose).
  if (keys.hasAdmin()) return;
  const { secret } = keys.create({ name: 'admin', owner: 'admin', admin: true });
  fs.writeFileSync(file, `${secret}\n`, { mode: 0o600 });
  log.info({ file }, 'created the first admin API key');
}

/** Copies the agent into the data directory so a rebuild of the repo never changes a running sandbox's view. */
function installAgent(binDir: string): string {
  if (!fs.existsSync(AGENT_BUILD_PATH)) {
    throw new RuntimeError(`agent binary missing at ${AGENT_BUILD_PATH}: run \`npm run build\` (needs musl-tools or gcc)`);
  }
  const target = path.join(binDir, 'capsule-agent');
  const src = fs.readFileSync(AGENT_BUILD_PATH);
  const same = fs.existsSync(target) && fs.readFileSync(target).equals(src);
  if (!same) {
    const tmp = `${target}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, src, { mode: 0o755 });
    fs.renameSync(tmp, target);
  }
  return target;
}

/** One daemon per data directory: two would fight over the same containers. */
function takeLock(file: string): () => void {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').trim());
    if (pid > 0 && pid !== process.pid && isAlive(pid)) {
      throw new ConflictError(`another capsule daemon (pid ${pid}) uses ${path.dirname(file)}; stop it or pass another --data-dir`);
    }
  } catch (err) {
    if (err instanceof ConflictError) throw err;
  }
  fs.writeFileSync(file, String(process.pid));
  return () => {
    try {
      if (fs.readFileSync(file, 'utf8').trim() === String(process.pid)) fs.unlinkSync(file);
    } catch {
      /* already gone */
    }
  };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
