/**
 * The E2B adapter's pure translations: request routing, the egress mapping, list paging and
 * metadata filters, signed file URLs and tokens, result text, the domain answered.
 */
import assert from 'node:assert/strict';
import type http from 'node:http';
import { describe, it } from 'node:test';
import { e2bRoutedUrl, isEnvdPath } from '../../../src/e2b/routing.js';
import { capsuleTemplate, domainOf, e2bState, networkInfo, networkOf, snapshotInfo } from '../../../src/e2b/mapping.js';
import { decodeCursor, encodeCursor, pageOf, parseMetadataQuery } from '../../../src/e2b/paging.js';
import { E2bTokens, signFile } from '../../../src/e2b/tokens.js';
import { resultLine } from '../../../src/e2b/interpreter.js';
import { connectError } from '../../../src/e2b/errors.js';
import { eventTranslator } from '../../../src/e2b/filesystem.js';
import { ConflictError, InvalidArgumentError, NotFoundError } from '../../../src/errors/index.js';

const req = (url: string, headers: Record<string, string> = {}) => ({ url, headers }) as unknown as http.IncomingMessage;
const ID = 'sbx-abcdefghijkl';

describe('E2B routing', () => {
  it('routes by E2b-Sandbox-Id and port, by host name, and signed file URLs; leaves the rest alone', () => {
    assert.equal(e2bRoutedUrl(req('/files?path=x', { 'e2b-sandbox-id': ID })), `/e2b/envd/${ID}/files?path=x`);
    assert.equal(e2bRoutedUrl(req('/contexts', { 'e2b-sandbox-id': ID.toUpperCase(), 'e2b-sandbox-port': '49999' })), `/e2b/jupyter/${ID}/contexts`);
    assert.equal(e2bRoutedUrl(req('/x', { 'e2b-sandbox-id': ID, 'e2b-sandbox-port': '8080' })), undefined);
    assert.equal(e2bRoutedUrl(req('/x', { 'e2b-sandbox-id': '../../v1/keys' })), undefined);
    assert.equal(e2bRoutedUrl(req('/health', { host: `49983-${ID}.localhost:7878` })), `/e2b/envd/${ID}/health`);
    assert.equal(e2bRoutedUrl(req('/', { host: `3000-${ID}.localhost:7878` })), undefined, 'user ports stay with the port proxy');
    assert.equal(e2bRoutedUrl(req('/files?path=%2Fa&signature=v1_x')), '/e2b/envd/-/files?path=%2Fa&signature=v1_x');
    assert.equal(e2bRoutedUrl(req('/files?path=%2Fa')), undefined, 'no signature, no sandbox: not E2B');
    assert.equal(e2bRoutedUrl(req('/v1/sandboxes')), undefined);
    assert.equal(isEnvdPath(`/e2b/envd/${ID}/files`), true);
    assert.equal(isEnvdPath('/e2b/sandboxes'), false, 'the control plane takes API keys');
  });
});

describe('E2B mapping', () => {
  it('maps templates, states and the domain', () => {
    assert.equal(capsuleTemplate('code-interpreter-v1'), 'python');
    assert.equal(capsuleTemplate('base'), 'base');
    assert.equal(capsuleTemplate('busybox'), 'busybox');
    assert.equal(e2bState('resuming'), 'running');
    assert.equal(e2bState('stopped'), 'paused');
    assert.equal(e2bState('killed'), undefined);
    assert.equal(domainOf('127.0.0.1:7878'), 'localhost:7878');
    assert.equal(domainOf('[::1]:41000'), 'localhost:41000');
    assert.equal(domainOf(undefined), 'localhost');
  });

  it('maps the internet switch and allow/deny lists onto an egress policy', () => {
    const t = 'busybox';
    const egress = (b: Parameters<typeof networkOf>[0]) => networkOf(b, true)?.egress;
    assert.equal(networkOf({ templateID: t }, false), undefined, 'no gateway and nothing asked: no network');
    assert.equal(egress({ templateID: t }), 'all', "E2B's default is internet on");
    assert.equal(egress({ templateID: t, allow_internet_access: false }), 'none');
    assert.deepEqual(egress({ templateID: t, allow_internet_access: false, network: { allowOut: ['a.com'] } }), { allow: ['a.com'] });
    assert.deepEqual(egress({ templateID: t, network: { denyOut: ['0.0.0.0/0'], allowOut: ['1.2.3.4'] } }), { allow: ['1.2.3.4'] });
    assert.deepEqual(egress({ templateID: t, network: { denyOut: ['10.0.0.0/8'] } }), { allow: ['*'], deny: ['10.0.0.0/8'] });
  });

  it('maps allowPublicTraffic onto the public ports: every port by default, none when false', () => {
    const t = 'busybox';
    assert.equal(networkOf({ templateID: t }, true)?.publicPorts, 'all', "E2B's default is public traffic");
    assert.deepEqual(networkOf({ templateID: t, network: { allowPublicTraffic: false } }, true)?.publicPorts, []);
    assert.equal(networkOf({ templateID: t, network: { allowPublicTraffic: true } }, false)?.publicPorts, 'all', 'an explicit ask goes to the service (which refuses it without a gateway)');
    assert.deepEqual(networkOf({ templateID: t, network: { allowPublicTraffic: false } }, false), { publicPorts: [] });
  });

  it("reports a sandbox's network as E2B's getInfo() does: internet switch, lists, public traffic", () => {
    assert.deepEqual(networkInfo({ egress: 'all', publicPorts: 'all', gateway: true }), { allowInternetAccess: true, network: { allowPublicTraffic: true } });
    assert.deepEqual(networkInfo({ egress: 'none', publicPorts: [], gateway: false }), {
      allowInternetAccess: false,
      network: { allowPublicTraffic: false, denyOut: ['0.0.0.0/0'] },
    });
    assert.deepEqual(networkInfo({ egress: { allow: ['a.com'] }, publicPorts: [8000], gateway: true }).network, {
      allowPublicTraffic: false,
      allowOut: ['a.com'],
      denyOut: ['0.0.0.0/0'],
    });
    assert.deepEqual(networkInfo({ egress: { allow: ['*'], deny: ['10.0.0.0/8'] }, publicPorts: 'all', gateway: true }).network, {
      allowPublicTraffic: true,
      denyOut: ['10.0.0.0/8'],
    });
  });

  it('drops only single quotes around a result text, as E2B does', () => {
    const text = (t: string) => (resultLine({ isMainResult: true, text: t } as never) as { text?: string }).text;
    assert.equal(text("'a'"), 'a');
    assert.equal(text('"it\'s"'), '"it\'s"');
    assert.equal(text('42'), '42');
  });

  it("maps watch events to envd's kinds, and drops the ones envd has no kind for", () => {
    const t = eventTranslator();
    const ev = (type: string, path: string) => t({ type, path } as never).map((e) => `${e.type}:${e.name}`);
    assert.deepEqual(ev('create', 'd/f.txt'), ['EVENT_TYPE_CREATE:d/f.txt']);
    assert.deepEqual(ev('write', 'd/f.txt'), ['EVENT_TYPE_WRITE:d/f.txt']);
    assert.deepEqual(ev('rename', 'f'), ['EVENT_TYPE_RENAME:f']);
    assert.deepEqual(ev('start', '/d'), []);
    assert.deepEqual(ev('overflow', ''), []);
  });

  it('maps Capsule errors to Connect codes', () => {
    assert.deepEqual(connectError(new NotFoundError('gone')), { code: 'not_found', message: 'gone' });
    assert.equal(connectError(new ConflictError('asleep', { state: 'paused' }))?.code, 'unavailable');
    assert.equal(connectError(new InvalidArgumentError('bad'))?.code, 'invalid_argument');
    assert.equal(connectError(new Error('bug')), undefined, 'bugs are not mapped: logged and internal');
  });
});

describe('E2B paging and filters', () => {
  it('reads metadata filters as the SDK encodes them', () => {
    const sdk = new URLSearchParams(Object.entries({ app: 'a&b=c', 'k y': 'ü' }).map(([k, v]) => [encodeURIComponent(k), encodeURIComponent(v)])).toString();
    assert.deepEqual(parseMetadataQuery(sdk), { app: 'a&b=c', 'k y': 'ü' });
    assert.deepEqual(parseMetadataQuery(undefined), {});
  });

  it('round-trips page tokens and refuses made-up ones', () => {
    assert.deepEqual(decodeCursor(encodeCursor({ createdAt: 5, id: ID })), { createdAt: 5, id: ID });
    assert.throws(() => decodeCursor('not-a-token'), InvalidArgumentError);
    assert.throws(() => decodeCursor(Buffer.from('{"a":1}').toString('base64url')), InvalidArgumentError);
  });

  it('pages newest first (or oldest first), ties broken by id, with a token only when more follow', () => {
    const items = [
      { id: 'a', createdAt: 1 },
      { id: 'c', createdAt: 2 },
      { id: 'b', createdAt: 2 },
      { id: 'd', createdAt: 3 },
    ];
    const p1 = pageOf(items, { limit: 2 });
    assert.deepEqual(p1.page.map((x) => x.id), ['d', 'c']);
    assert.ok(p1.next);
    const p2 = pageOf(items, { limit: 2, nextToken: p1.next });
    assert.deepEqual(p2.page.map((x) => x.id), ['b', 'a']);
    assert.equal(p2.next, undefined);
    assert.deepEqual(pageOf(items, { limit: 3, asc: true }).page.map((x) => x.id), ['a', 'b', 'c']);
    assert.deepEqual(pageOf(items, { limit: 9 }), { page: [items[3], items[1], items[2], items[0]], next: undefined });
    assert.deepEqual(pageOf([], { limit: 1 }), { page: [], next: undefined });
  });

  it('answers a snapshot as E2B\'s SnapshotInfo: the Capsule id, and the name when it has one', () => {
    const snap = { id: 'snap-abcdefghijkl', sandboxId: ID, template: 'busybox', sizeBytes: 0, layers: 2, createdAt: new Date(0).toISOString(), metadata: {}, usedBy: [] };
    assert.deepEqual(snapshotInfo(snap), { snapshotID: 'snap-abcdefghijkl', names: [] });
    assert.deepEqual(snapshotInfo({ ...snap, name: 'prepared' }), { snapshotID: 'snap-abcdefghijkl', names: ['prepared'] });
  });
});

describe('E2B tokens', () => {
  const tokens = new E2bTokens(Buffer.alloc(32, 1));
  const other = new E2bTokens(Buffer.alloc(32, 2));

  it('derives per-sandbox tokens from the data directory key', () => {
    assert.notEqual(tokens.envdToken(ID), tokens.envdToken('sbx-bbbbbbbbbbbb'));
    assert.notEqual(tokens.envdToken(ID), other.envdToken(ID));
    assert.equal(tokens.checkEnvd(ID, tokens.envdToken(ID)), true);
    assert.equal(tokens.checkEnvd(ID, other.envdToken(ID)), false);
    assert.equal(tokens.checkEnvd(ID, undefined), false);
  });

  it('checks signed file URLs: path, operation, user and expiry', () => {
    const token = tokens.envdToken(ID);
    const exp = Math.floor(Date.now() / 1000) + 60;
    const sig = signFile('/a.txt', 'read', 'user', token, exp);
    assert.match(sig, /^v1_[A-Za-z0-9+/]+$/);
    const ok = { path: '/a.txt', operation: 'read' as const, user: 'user', signature: sig, expiration: exp };
    assert.equal(tokens.checkSignature(ID, ok), true);
    assert.equal(tokens.checkSignature(ID, { ...ok, path: '/b.txt' }), false);
    assert.equal(tokens.checkSignature(ID, { ...ok, operation: 'write' }), false);
    assert.equal(tokens.checkSignature(ID, { ...ok, user: 'root' }), false);
    assert.equal(tokens.checkSignature(ID, { ...ok, expiration: exp + 1 }), false);
    assert.equal(tokens.checkSignature(ID, ok, (exp + 1) * 1000), false, 'expired');
    assert.equal(other.checkSignature(ID, ok), false);
  });
});
