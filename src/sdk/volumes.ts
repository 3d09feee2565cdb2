/**
 * Named volumes: persistent disks of their own that sandboxes attach at
 * create (`Sandbox.create({ volumes: [{ name, path, readOnly }] })`). They
 * outlive sandboxes and daemon restarts; deleting one still attached answers
 * ConflictError.
 */
import type { z } from 'zod';
import { CreateVolumeRequest, ListVolumesResponse, Volume as VolumeSchema, type Volume as VolumeInfo } from '../schemas/index.js';
import { HttpClient } from './http.js';
import { pickConnection, resolveConnection, type ConnectionOptions } from './options.js';

export type { VolumeInfo };
export type CreateVolumeOptions = z.input<typeof CreateVolumeRequest> & ConnectionOptions;

function client(opts: ConnectionOptions): HttpClient {
  return new HttpClient(resolveConnection(pickConnection(opts)));
}

const volumePath = (name: string) => `/volumes/${encodeURIComponent(name)}`;

export const Volume = {
  /** Make a volume (`sizeMb` default 1024; ENOSPC past it). ConflictError when the name is taken. */
  async create(opts: CreateVolumeOptions): Promise<VolumeInfo> {
    const body = { name: opts.name, ...(opts.sizeMb !== undefined ? { sizeMb: opts.sizeMb } : {}) };
    return client(opts).json('POST', '/volumes', VolumeSchema, { json: body });
  },
  async list(opts: ConnectionOptions = {}): Promise<VolumeInfo[]> {
    return (await client(opts).json('GET', '/volumes', ListVolumesResponse)).volumes;
  },
  /** NotFoundError when the caller has no volume of that name. */
  async get(name: string, opts: ConnectionOptions = {}): Promise<VolumeInfo> {
    return client(opts).json('GET', volumePath(name), VolumeSchema);
  },
  /** Delete it and its data. ConflictError while a live sandbox attaches it. */
  async delete(name: string, opts: ConnectionOptions = {}): Promise<void> {
    await client(opts).empty('DELETE', volumePath(name));
  },
};
