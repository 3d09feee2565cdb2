/** The services the transports call. Built once by the daemon; passed to routes (no singletons). */
import type { SandboxManager } from '../sandboxes/manager.js';
import type { CommandService } from '../sandboxes/commands.js';
import type { FileService } from '../sandboxes/files.js';
import type { TemplateCatalog } from '../templates/catalog.js';
import type { KeyStore } from '../auth/keys.js';
import type { KeyService } from '../auth/key-service.js';
import type { RateLimiter } from '../auth/rate-limit.js';
import type { VolumeService } from '../volumes/service.js';
import type { CodeInterpreterService } from '../interpreter/service.js';

export interface Services {
  version: string;
  sandboxes: SandboxManager;
  commands: CommandService;
  files: FileService;
  /** Code contexts and cells (src/interpreter). */
  code: CodeInterpreterService;
  volumes: VolumeService;
  templates: TemplateCatalog;
  keys: KeyService;
  /** Verifies presented secrets at the edge; null when authentication is off (`--no-auth`). */
  keyStore: KeyStore | null;
  limiter: RateLimiter;
}
