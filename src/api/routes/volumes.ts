/** Named volumes: thin routes over the volume service (src/volumes/service.ts). */
import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import { CreateVolumeRequest, ListVolumesResponse, Volume, VolumeParams } from '../../schemas/index.js';

export function volumeRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'POST',
    url: '/v1/volumes',
    summary: "Create a named volume: a persistent disk of its own (sizeMb quota) that sandboxes attach at create; it outlives them and daemon restarts",
    tag: 'volumes',
    body: CreateVolumeRequest,
    errors: ['conflict', 'unsupported', 'runtime_error'],
    responses: { 201: { description: 'The volume', schema: Volume } },
    handler: async ({ body, ctx }) => s.volumes.create(ctx, body),
  });

  t.add({
    method: 'GET',
    url: '/v1/volumes',
    summary: "The caller's volumes, each with the live sandboxes that attach it",
    tag: 'volumes',
    responses: { 200: { description: 'Volumes', schema: ListVolumesResponse } },
    handler: async ({ ctx }) => ({ volumes: s.volumes.list(ctx) }),
  });

  t.add({
    method: 'GET',
    url: '/v1/volumes/:name',
    summary: 'Get a volume',
    tag: 'volumes',
    params: VolumeParams,
    responses: { 200: { description: 'The volume', schema: Volume } },
    handler: async ({ params, ctx }) => s.volumes.get(ctx, params.name),
  });

  t.add({
    method: 'DELETE',
    url: '/v1/volumes/:name',
    summary: 'Delete a volume and its data; 409 while a live sandbox (running, paused or stopped) attaches it',
    tag: 'volumes',
    params: VolumeParams,
    errors: ['conflict', 'runtime_error'],
    responses: { 204: { description: 'Deleted' } },
    handler: async ({ params, ctx }) => {
      await s.volumes.remove(ctx, params.name);
      return undefined;
    },
  });
}
