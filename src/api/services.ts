/** The services the transports call. Built once by the daemon; passed to routes (no singletons). */
import type { SandboxManager } from '../sandboxes/manager.js';
import type { CommandService } from '../sandboxes/commands.js';
import type { FileService } from '../sandboxes/files.js';
import type { BuildProgress, TemplateInfo } from '../templates/types.js';
import type { KeyStore } from '../auth/keys.js';
import type { RateLimiter } from '../auth/rate-limit.js';

export interface TemplateCatalog {
  list(): TemplateInfo[];
  build(name: string, opts: { force?: boolean; onProgress?: (p: BuildProgress) => void; signal?: AbortSignal }): Promise<unknown>;
  get(name: string): TemplateInfo;
}

export interface Services {
  version: string;
  sandboxes: SandboxManager;
  commands: CommandService;
  files: FileService;
  templates: TemplateCatalog;
  /** null when authentication is off (`--no-auth`). */
  keys: KeyStore | null;
  limiter: RateLimiter;
}
