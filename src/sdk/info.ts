/** What the daemon is: its version, its runtime backends (which isolation kinds this host has, and why not) and its warm pools. */
import { InfoResponse } from '../schemas/index.js';
import { HttpClient } from './http.js';
import { pickConnection, resolveConnection, type ConnectionOptions } from './options.js';

/** GET /v1/info: `backends` lists container, gvisor and microvm with `available` and, when absent, `reason`. */
export async function getDaemonInfo(opts: ConnectionOptions = {}): Promise<InfoResponse> {
  const http = new HttpClient(resolveConnection(pickConnection(opts)));
  return http.json('GET', '/info', InfoResponse);
}
