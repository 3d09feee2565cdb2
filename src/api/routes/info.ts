import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import { InfoResponse } from '../../schemas/index.js';

export function infoRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'GET',
    url: '/v1/info',
    summary: 'Daemon version, the runtime backends (every isolation kind, available or not, and why) and warm pool state',
    tag: 'meta',
    responses: { 200: { description: 'Daemon state', schema: InfoResponse } },
    handler: async (): Promise<InfoResponse> => ({ version: s.version, runtime: s.sandboxes.runtimeInfo(), backends: s.sandboxes.backends(), pools: s.sandboxes.poolStats() }),
  });
}
