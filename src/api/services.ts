/** The services the transports call. Built once by the daemon; passed to routes (no singletons). */
import type { SandboxManager } from '../sandboxes/manager.js';
import type { CommandService } from '../sandboxes/commands.js';
import type { FileService } from '../sandboxes/files.js';
import type { TemplateCatalog } from '../templates/catalog.js';
import type { KeyStore } from '../auth/keys.js';
import type { KeyService } from '../auth/key-service.js';
import type { RateLimiter } from '../auth/rate-limit.js';
import type { VolumeService } from '../volumes/service.js';
import type { SnapshotService } from '../snapshots/service.js';
import type { PtyService } from '../sandboxes/pty.js';
import type { WatchService } from '../sandboxes/watch.js';
import type { MetricsService } from '../sandboxes/metrics.js';
import type { PrometheusTelemetry } from '../telemetry/prometheus.js';
import type { NetworkService } from '../network/service.js';
import type { CodeInterpreterService } from '../interpreter/service.js';
import type { SandboxEventLog } from '../sandboxes/events.js';

export interface Services {
  version: string;
  sandboxes: SandboxManager;
  commands: CommandService;
  files: FileService;
  /** Code contexts and cells (src/interpreter). */
  code: CodeInterpreterService;
  volumes: VolumeService;
  /** Filesystem snapshots (src/snapshots). */
  snapshots: SnapshotService;
  templates: TemplateCatalog;
  keys: KeyService;
  /** Verifies presented secrets at the edge; null when authentication is off (`--no-auth`). */
  keyStore: KeyStore | null;
  limiter: RateLimiter;
  pty: PtyService;
  watches: WatchService;
  metrics: MetricsService;
  /** The Prometheus registry behind GET /metrics; absent in daemons built without one (tests). */
  prometheus?: PrometheusTelemetry;
  /** GET /metrics needs no key (`--metrics-open`). */
  metricsOpen?: boolean;
  /** Egress policy, ledger and port exposure. */
  network: NetworkService;
  /** Each sandbox's log: lifecycle and command events (src/sandboxes/events.ts). */
  logs: SandboxEventLog;
  /** The daemon's data directory (the E2B adapter keeps the secret its sandbox access tokens derive from there). */
  dataDir: string;
}
