import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import type { ApiKey } from '../../auth/keys.js';
import { ApiKeyInfo, CreateKeyRequest, CreateKeyResponse, KeyParams, ListKeysResponse } from '../../schemas/index.js';

function toApiKey(k: ApiKey) {
  return {
    id: k.id,
    name: k.name,
    owner: k.owner,
    admin: k.admin,
    limits: k.limits,
    createdAt: new Date(k.createdAt).toISOString(),
    ...(k.revokedAt !== null ? { revokedAt: new Date(k.revokedAt).toISOString() } : {}),
  };
}

export function keyRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'POST',
    url: '/v1/keys',
    summary: 'Create an API key (admin); the secret is in the answer and nowhere else',
    tag: 'keys',
    body: CreateKeyRequest,
    responses: { 201: { description: 'The new key with its secret', schema: CreateKeyResponse } },
    handler: async ({ body, ctx }) => {
      const { key, secret } = s.keys.create(ctx, body);
      return { ...toApiKey(key), key: secret };
    },
  });
  t.add({
    method: 'GET',
    url: '/v1/keys',
    summary: 'List API keys (admin); secrets are never shown',
    tag: 'keys',
    responses: { 200: { description: 'Keys', schema: ListKeysResponse } },
    handler: async ({ ctx }) => ({ keys: s.keys.list(ctx).map(toApiKey) }),
  });
  t.add({
    method: 'DELETE',
    url: '/v1/keys/:keyId',
    summary: 'Revoke an API key (admin); it stops working at once',
    tag: 'keys',
    params: KeyParams,
    responses: { 200: { description: 'The revoked key', schema: ApiKeyInfo } },
    handler: async ({ params, ctx }) => toApiKey(s.keys.revoke(ctx, params.keyId)),
  });
}
