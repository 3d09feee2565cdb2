/**
 * What the daemon can ask of a sandbox's agent. The agent runs as the
 * sandbox's init, already inside its namespaces, cgroup and seccomp filter,
 * so it forks commands and touches files with the sandbox's own view of the
 * world. Everything it sends back is untrusted: the client bounds and checks it.
 */
import type { Readable } from 'node:stream';
import type { AgentFeature, AgentProtocol } from './protocol.js';

export type { AgentFeature, AgentProtocol } from './protocol.js';

/**
 * Where a sandbox's agent can be reached. The runtime driver that started the
 * sandbox says which; the agent client connects to it. Only unix sockets exist
 * today; a microVM's vsock port or a remote node's TCP address fit the same slot.
 */
export type AgentEndpoint =
  | { kind: 'unix'; path: string }
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'vsock'; cid: number; port: number };

/** A human-readable form of an endpoint, for logs and error messages. */
export function describeEndpoint(e: AgentEndpoint): string {
  switch (e.kind) {
    case 'unix':
      return e.path;
    case 'tcp':
      return `tcp://${e.host}:${e.port}`;
    case 'vsock':
      return `vsock://${e.cid}:${e.port}`;
  }
}

/**
 * One stream of a process (protocol 1.1, feature `exec-streams`). `fds` are
 * the child's file descriptors (0-9) bound to it: `pipe-out` carries what the
 * process writes on them to the daemon, `pipe-in` what the daemon writes to
 * the process, `null` binds them to /dev/null. `pty` (1.2, feature `pty`) is a
 * terminal: the fds get its slave side (the first one becomes the controlling
 * terminal), and the stream carries output and keystrokes both ways.
 */
export type StreamKind = 'null' | 'pipe-in' | 'pipe-out' | 'pty';
export interface StreamSpec {
  /** Stream id on the wire, 0-254; 0, 1, 2 are stdin, stdout, stderr by convention. */
  id: number;
  kind: StreamKind;
  fds: number[];
  /** `pty` only: the terminal's size when the process starts (default 24 x 80). */
  rows?: number;
  cols?: number;
}

export interface ExecRequest {
  /** argv[0] is looked up in PATH (from env, else a default PATH) when it has no slash. */
  argv: string[];
  /** The complete environment of the new process. */
  env: Record<string, string>;
  /** Working directory inside the sandbox (default "/"). */
  cwd?: string;
  /** User name (looked up in the sandbox's /etc/passwd) or numeric uid; default root. */
  user?: string;
  /** When false, stdin is /dev/null; when true, stdin is a pipe fed by writeStdin. */
  stdin: boolean;
  /**
   * Only without stdin: let the agent hold the reply (the pid) for up to 2 ms so that a short
   * command's reply, output and exit arrive together, one wake-up instead of two. For callers
   * that need the exit anyway; not for background processes, whose pid is wanted at once.
   */
  holdReply?: boolean;
  /**
   * The process's streams, replacing the stdin/stdout/stderr layout (then `stdin` is ignored).
   * Needs an agent with `exec-streams`; fds 0-2 that no stream names get /dev/null.
   */
  streams?: StreamSpec[];
  /**
   * Called with the process as soon as the agent's reply arrives, before any of its output or its exit
   * is delivered: listeners added here see everything, and a short command's reply, output and exit,
   * which come in one read, are delivered in that same turn. Without it they wait one turn of the event
   * loop (setImmediate) for the caller to attach after the returned promise resolves.
   */
  onStart?: (p: AgentProcess) => void;
}

export interface ExitStatus {
  /** Exit code, or 128+signal when killed by a signal (shell convention). */
  exitCode: number;
  /** Signal name when killed by a signal, e.g. "SIGKILL". */
  signal?: string;
}

export interface AgentProcess {
  /** Pid inside the sandbox's pid namespace. */
  readonly pid: number;
  /** Output chunks, in order per stream. Listeners attached after data arrived miss it. */
  on(event: 'stdout' | 'stderr', listener: (chunk: Buffer) => void): this;
  /** Output of every output stream, with its id (streams 1 and 2 also fire stdout / stderr). */
  on(event: 'data', listener: (stream: number, chunk: Buffer) => void): this;
  /**
   * The exit, after all output was delivered: called in the turn the agent's EXIT arrives, before `exited`
   * resolves, so a caller can finish its bookkeeping without a promise hop (not called when the connection is lost).
   */
  on(event: 'exit', listener: (status: ExitStatus) => void): this;
  /** The process's streams: as requested, or as the agent reported them on ATTACH (1.0: the classic three). */
  readonly streams: ReadonlyArray<{ id: number; kind: StreamKind }>;
  /** Write to an input stream (`pipe-in`); stream 0 is what writeStdin writes. */
  writeStream(stream: number, data: Buffer): Promise<void>;
  /** End an input stream. */
  closeStream(stream: number): Promise<void>;
  /** Resolves once the process exited and all its output was delivered. */
  readonly exited: Promise<ExitStatus>;
  writeStdin(data: Buffer): Promise<void>;
  closeStdin(): Promise<void>;
  /** Signal the process group of the command. */
  signal(signal: NodeJS.Signals | number): Promise<void>;
  /** New window size of the process's terminal (its `pty` stream); the foreground job gets SIGWINCH. */
  resize(rows: number, cols: number): Promise<void>;
  /** Stop receiving output; the process keeps running in the sandbox and can be attached again. */
  detach(): void;
  /**
   * Back-pressure: while paused, output already in flight is still delivered, but no
   * new credit goes back to the agent, so the command blocks on a full pipe.
   */
  pause(): void;
  resume(): void;
}

/** What a watch reports, relative to the watched directory (docs/agent-protocol.md, "Watches"). */
export type WatchEventType = 'create' | 'write' | 'remove' | 'rename' | 'chmod' | 'overflow';
export interface WatchEvent {
  type: WatchEventType;
  /** Relative to the watched directory, '' for the directory itself; empty for overflow. Raw bytes as UTF-8 with replacement. */
  path: string;
  isDir: boolean;
}

export interface AgentWatch {
  /** Events in the order the agent saw them. */
  on(event: 'event', listener: (ev: WatchEvent) => void): this;
  /** Resolves when the watch ends: the watched directory went away (`gone`), or `close()`; rejects when the connection is lost. */
  readonly ended: Promise<{ reason: 'gone' | 'closed' }>;
  /** Back-pressure: no credit goes back while paused; the agent's bounded queue then overflows (an `overflow` event). */
  pause(): void;
  resume(): void;
  close(): void;
}

export type FileType = 'file' | 'dir' | 'symlink' | 'fifo' | 'socket' | 'char' | 'block' | 'unknown';

export interface FileEntry {
  /** Raw name bytes decoded as UTF-8 with replacement; `nameBase64` carries the exact bytes. */
  name: string;
  nameBase64?: string;
  path: string;
  type: FileType;
  size: number;
  /** Permission bits and file type bits as in st_mode. */
  mode: number;
  /** Modification time, ms since epoch. */
  mtimeMs: number;
  /** Target of a symlink (bounded), when type is symlink. */
  symlinkTarget?: string;
  /**
   * Feature `xattr`, when asked with a prefix: the extended attributes under it (names without the
   * prefix). Only pairs that are valid UTF-8; bounded by the agent (XATTR_LIMITS) and checked again here.
   */
  xattrs?: Record<string, string>;
  /** Some attributes under the prefix were left out (over the bounds, unreadable, or not UTF-8). */
  xattrsPartial?: boolean;
}

/** Extended attributes a write sets on the new file (feature `xattr`): full names are prefix + key. */
export interface XattrSet {
  /** Starts with `user.`; at most 64 bytes. */
  prefix: string;
  entries: ReadonlyArray<readonly [key: string, value: string]>;
}

/**
 * Opens for writing the temp file an agent offered for an upload (feature `file-handoff`), named by its
 * descriptor number inside the agent and its inode, and gives the daemon's own descriptor for it (the caller
 * closes it). Undefined declines, and the upload goes to the agent as data. The runtime makes it
 * (RuntimeDriver.openAgentFile); the agent's client knows nothing of /proc.
 */
export type FileHandoff = (fd: number, ino: bigint) => Promise<number | undefined>;

export interface WriteFileOptions {
  /** The new file's mode (default 0644). */
  mode?: number;
  xattrs?: XattrSet;
  handoff?: FileHandoff;
}

export interface AgentConnection {
  /** The agent's version string from its HELLO, e.g. "capsule-agent/0.2.0". */
  readonly agentVersion: string;
  /** The protocol version the agent speaks and the features in effect on this connection. */
  readonly protocol: AgentProtocol;
  /** Whether a feature is in effect; requests that need a missing one fail with AgentFeatureError before anything is sent. */
  supports(feature: AgentFeature): boolean;
  /** Round trip to the agent; also tells the agent's version. */
  ping(): Promise<{ version: string }>;
  exec(req: ExecRequest): Promise<AgentProcess>;
  /**
   * Running processes the agent started (survives daemon restarts). With
   * includeExited, also finished ones whose exit nobody collected yet
   * (marked exited, with exitCode); attach() to those delivers their kept output and exit.
   */
  listProcesses(opts?: { includeExited?: boolean }): Promise<Array<{ pid: number; argv: string[]; exited?: boolean; exitCode?: number }>>;
  /** Re-attach to a process started over an earlier connection. */
  attach(pid: number): Promise<AgentProcess>;
  /** Watch a directory (feature `watch`); resolves once the kernel watches are in place. */
  watch(path: string, opts?: { recursive?: boolean }): Promise<AgentWatch>;

  /** Stream a regular file's bytes (refuses FIFOs, devices, directories). */
  readFile(path: string, opts?: { maxBytes?: number }): Promise<{ size: number; stream: Readable }>;
  /** Write a file from a stream; creates parent directories; replaces atomically-ish (write then rename). */
  writeFile(path: string, data: Readable | Buffer, opts?: WriteFileOptions): Promise<{ size: number }>;
  /** With `xattrPrefix` (feature `xattr`), entries carry the extended attributes under it. */
  list(path: string, opts?: { limit?: number; xattrPrefix?: string }): Promise<{ entries: FileEntry[]; truncated: boolean }>;
  stat(path: string, opts?: { xattrPrefix?: string }): Promise<FileEntry>;
  mkdir(path: string): Promise<void>;
  remove(path: string, opts?: { recursive?: boolean }): Promise<void>;
  rename(from: string, to: string): Promise<void>;

  close(): void;
  /**
   * The OS descriptor of the connection's socket, for the daemon to tune (its send buffer): undefined
   * when the transport has none or does not say.
   */
  socketFd?(): number | undefined;
  /** Fires once when the connection is lost (agent died, sandbox killed). */
  onClose(listener: (err?: Error) => void): void;
}
