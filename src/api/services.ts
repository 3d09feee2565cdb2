/** The services the transports call. Built once by the daemon; passed to routes (no singletons). */
import type { SandboxManager } from '../sandboxes/manager.js';
import type { CommandService } from '../sandboxes/commands.js';
import type { FileService } from '../sandboxes/files.js';
import type { TemplateCatalog } from '../templates/catalog.js';
import type { KeyStore } from '../auth/keys.js';
import type { KeyService } from '../auth/key-service.js';
import type { RateLimiter } from '../auth/rate-limit.js';
import type { NetworkService } from '../network/service.js';

export interface Services {
  version: string;
  sandboxes: SandboxManager;
  commands: CommandService;
  files: FileService;
  templates: TemplateCatalog;
  keys: KeyService;
  /** Verifies presented secrets at the edge; null when authentication is off (`--no-auth`). */
  keyStore: KeyStore | null;
  limiter: RateLimiter;
  /** Egress policy, ledger and port exposure. */
  network: NetworkService;
}
