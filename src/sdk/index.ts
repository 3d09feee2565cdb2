/**
 * @capsule/sdk — the public entry point. Everything users need is exported
 * here; the other modules in src/sdk are internal.
 *
 *   import { Sandbox } from '@capsule/sdk';
 *   const sbx = await Sandbox.create({ template: 'debian' });
 *   const r = await sbx.commands.run('echo hi');
 *   await sbx.kill();
 */
export { Sandbox } from './sandbox.js';
export type { CreateOptions, ListOptions as ListSandboxesOptions, WakeOptions } from './sandbox.js';
export { CommandHandle, Commands } from './commands.js';
export type { ConnectOptions, OutputCallback, OutputEncoding, RunOptions, Signal, WaitOptions } from './commands.js';
export { Files } from './files.js';
export type { DirectoryListing, FilesystemEvent, ListOptions as ListFilesOptions, ReadOptions, WatchHandle, WatchOptions, WriteData, WriteOptions } from './files.js';
export { Pty, PtyHandle } from './pty.js';
export type { PtyConnectOptions, PtyCreateOptions, PtyExit } from './pty.js';
export { Network } from './network.js';
export type { EgressPolicy, LogOptions as NetworkLogOptions, NetworkConfig, NetworkLogEntry, PortAccess, PublicPorts, SandboxNetwork } from './network.js';
export type { CodeContext, CodeLanguage, CodeResult, CreateCodeContextOptions, Execution, ExecutionError, RunCodeOptions } from './code.js';
export { Template } from './templates.js';
export { getDaemonInfo } from './info.js';
export { ApiKeys } from './keys.js';
export { Volume } from './volumes.js';
export type { CreateVolumeOptions, VolumeInfo } from './volumes.js';
export { Snapshot } from './snapshots.js';
export type { SnapshotInfo, SnapshotOptions } from './snapshots.js';
export type { ApiKeyInfo, CreateKeyOptions } from './keys.js';
export type { BuildInfo, BuildOptions, BuildProgress, BuildTemplateOptions, CopyOptions, StepProgress, TemplateDefinition, TemplateDetails, TemplateInfo, TemplateStep } from './templates.js';
export { DEFAULT_API_URL, DEFAULT_REQUEST_TIMEOUT_MS } from './options.js';
export type { ConnectionOptions } from './options.js';

export {
  CapsuleError,
  ConflictError,
  ERROR_CLASSES,
  ERROR_CODES,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  PayloadTooLargeError,
  PermissionDeniedError,
  RateLimitedError,
  UnsupportedError,
  RuntimeError,
  SandboxError,
  TimeoutError,
  UnauthenticatedError,
  UnavailableError,
  isCapsuleError,
} from '../errors/index.js';
export type { ErrorCode } from '../errors/index.js';

export type {
  CodeEvent,
  CommandEvent,
  CommandResult,
  RunCodeResult,
  CreateSandboxRequest,
  FileEntry,
  InfoResponse as DaemonInfo,
  Lifecycle,
  ProcessInfo,
  RunCommandRequest,
  Sandbox as SandboxInfo,
  SandboxMetric,
  SandboxLogEntry,
  SandboxLogLevel,
  WatchEvent,
} from '../schemas/index.js';
export type SandboxState = import('../schemas/index.js').Sandbox['state'];

/** The zod schemas behind every type above, for validating data yourself. */
export * as schemas from '../schemas/index.js';
