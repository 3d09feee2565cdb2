/**
 * Connection options shared by every SDK call. Each one has a default and,
 * where it makes sense, an environment variable that fills it in when the
 * caller leaves it out. Resolution happens once, when a Sandbox (or a
 * Template helper) is made, so later changes to process.env do not leak in.
 */

/** Where the daemon listens when neither `apiUrl` nor CAPSULE_URL says otherwise. */
export const DEFAULT_API_URL = 'http://127.0.0.1:7878';
/** Per-request limit when neither `requestTimeoutMs` nor CAPSULE_REQUEST_TIMEOUT_MS is set. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;

export interface ConnectionOptions {
  /**
   * Base URL of the Capsule daemon, e.g. `http://127.0.0.1:7878` (no `/v1`).
   * Fallback: the CAPSULE_URL environment variable, then {@link DEFAULT_API_URL}.
   */
  apiUrl?: string;
  /**
   * API key sent as `Authorization: Bearer <key>`. Fallback: CAPSULE_API_KEY.
   * When neither is set no Authorization header is sent.
   */
  apiKey?: string;
  /**
   * How long one HTTP request may take, in ms; 0 disables the limit.
   * Calls that wait on purpose (running a command, waiting for a process,
   * streaming) add their own wait time on top of this, and streamed
   * responses only count the time until the response headers arrive.
   * Fallback: CAPSULE_REQUEST_TIMEOUT_MS, then {@link DEFAULT_REQUEST_TIMEOUT_MS}.
   */
  requestTimeoutMs?: number;
  /**
   * Aborts every request made through this connection (for example when the
   * caller shuts down). Individual calls can take their own signal as well.
   */
  signal?: AbortSignal;
  /**
   * Run buffered foreground commands (`commands.run` without callbacks, signal or background) over one
   * WebSocket per Sandbox (GET /v1/channel), opened on first use, instead of one HTTP request each: the
   * same results and errors, a shorter round trip. When it cannot be opened the SDK uses HTTP; after a
   * drop it opens a new one. `false` always uses HTTP. Fallback: CAPSULE_COMMAND_CHANNEL (`0` turns it off), then true.
   */
  commandChannel?: boolean;
}

/** ConnectionOptions with every default filled in. */
export interface ResolvedConnection {
  apiUrl: string;
  apiKey: string | undefined;
  requestTimeoutMs: number;
  signal: AbortSignal | undefined;
  commandChannel: boolean;
}

function envTimeout(): number | undefined {
  const raw = process.env.CAPSULE_REQUEST_TIMEOUT_MS;
  if (raw === undefined || raw.trim() === '') return undefined;
  const n = Number(raw);
  return Number.isFinite(n) && n >= 0 ? n : undefined;
}

/** Fill in defaults and environment fallbacks. */
export function resolveConnection(opts: ConnectionOptions = {}): ResolvedConnection {
  const apiUrl = (opts.apiUrl ?? (process.env.CAPSULE_URL || undefined) ?? DEFAULT_API_URL).replace(/\/+$/, '');
  const apiKey = opts.apiKey ?? (process.env.CAPSULE_API_KEY || undefined);
  const requestTimeoutMs = opts.requestTimeoutMs ?? envTimeout() ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const commandChannel = opts.commandChannel ?? !/^(0|false|no|off)$/i.test(process.env.CAPSULE_COMMAND_CHANNEL?.trim() ?? '');
  return { apiUrl, apiKey, requestTimeoutMs, signal: opts.signal, commandChannel };
}

/** Split a bag of options into the connection part and the rest. */
export function pickConnection<T extends ConnectionOptions>(opts: T | undefined): ConnectionOptions {
  if (!opts) return {};
  const { apiUrl, apiKey, requestTimeoutMs, signal, commandChannel } = opts;
  return { apiUrl, apiKey, requestTimeoutMs, signal, commandChannel };
}
