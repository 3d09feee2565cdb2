/** API keys: `ApiKeys.create()` returns the secret once; list and revoke need an admin key. */
import type { z } from 'zod';
import { ApiKeyInfo, CreateKeyRequest, CreateKeyResponse, ListKeysResponse } from '../schemas/index.js';
import { HttpClient } from './http.js';
import { pickConnection, resolveConnection, type ConnectionOptions } from './options.js';

export type ApiKeyInfo = z.infer<typeof ApiKeyInfo>;
export type CreateKeyOptions = z.input<typeof CreateKeyRequest>;

function client(opts: ConnectionOptions): HttpClient {
  return new HttpClient(resolveConnection(pickConnection(opts)));
}

export const ApiKeys = {
  /** Make a key. The answer's `key` is the secret: it is shown here and never again. */
  async create(req: CreateKeyOptions, opts: ConnectionOptions = {}): Promise<z.infer<typeof CreateKeyResponse>> {
    return client(opts).json('POST', '/keys', CreateKeyResponse, { json: req });
  },
  async list(opts: ConnectionOptions = {}): Promise<ApiKeyInfo[]> {
    return (await client(opts).json('GET', '/keys', ListKeysResponse)).keys;
  },
  /** Revoke a key by id; it stops working at once. */
  async revoke(keyId: string, opts: ConnectionOptions = {}): Promise<ApiKeyInfo> {
    return client(opts).json('DELETE', `/keys/${encodeURIComponent(keyId)}`, ApiKeyInfo);
  },
};
