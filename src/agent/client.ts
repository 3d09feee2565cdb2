/**
 * Daemon-side client of the in-sandbox agent (protocol: docs/agent-protocol.md).
 * The rest of the daemon imports it from here; the parts:
 *
 * - connection.ts: the multiplexer (socket, handshake, channel table)
 * - channel.ts: what every channel shares, including its first frame (OK or ERROR)
 * - process.ts, file-read.ts, file-write.ts, list.ts, watch.ts, request.ts: one module per channel kind
 */
export { connectAgent, type ConnectOptions } from './connection.js';
export { READ_GRANT_BATCH, READ_WINDOW, READ_WINDOW_LARGE } from './file-read.js';
export { WRITE_WINDOW } from './file-write.js';
export type { ProcessInfo } from './request.js';
export { AgentFeatureError, AgentVersionError } from './errors.js';
export type { AgentFeature, AgentProtocol } from './protocol.js';
export type { AgentConnection, AgentProcess, AgentWatch, WatchEvent, WatchEventType } from './types.js';
