/**
 * Command output leaves the daemon intact: multi-byte characters split across
 * the agent's frames arrive whole (SDK callbacks and result, raw NDJSON, a
 * follower of a background process), and bytes that are not UTF-8 come
 * through exactly in base64. Regression for the defect 2: cat of
 * 30,000 x "é€😀" streamed 8 U+FFFD.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { api, authHeaders, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { Sandbox } from '../../../src/sdk/index.js';

const TEXT = 'é€😀'.repeat(30_000); // 270,000 bytes; 65,536 is not a multiple of 9, so frames cut characters
const FILE = '/tmp/multibyte.txt';

/** POST or GET an NDJSON stream and return its parsed lines. */
async function ndjson(d: TestDaemon, method: string, path: string, body?: unknown): Promise<any[]> {
  const r = await fetch(d.url + path, {
    method,
    headers: { ...authHeaders(d.url), ...(body ? { 'content-type': 'application/json' } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  assert.equal(r.status, 200, await r.clone().text());
  return (await r.text()).split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

function joined(events: any[], type: 'stdout' | 'stderr'): string {
  return events.filter((e) => e.type === type).map((e) => e.data).join('');
}

describe('command output encoding (real sandboxes)', () => {
  let d: TestDaemon;
  let dataDir: string;
  let sbx: Sandbox;
  let random: Buffer;
  before(async () => {
    dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir });
    sbx = await Sandbox.create({ apiUrl: d.url, template: 'busybox' });
    await sbx.files.write(FILE, TEXT);
    random = crypto.randomBytes(200_000);
    random[0] = 0xff; // certainly not UTF-8
    await sbx.files.write('/tmp/random.bin', random);
  });
  after(async () => {
    await sbx?.kill().catch(() => undefined);
    await d?.stop();
    if (dataDir) await removeDataDir(dataDir);
  });

  it('SDK: streamed callbacks and the result are exactly the file, never a U+FFFD', async () => {
    let streamed = '';
    let calls = 0;
    const r = await sbx.commands.run(['cat', FILE], { onStdout: (s) => void ((streamed += s), calls++) });
    assert.ok(calls > 1, `output came in ${calls} pieces`);
    assert.equal(streamed.includes('\uFFFD'), false, 'no replacement characters');
    assert.equal(streamed, TEXT);
    assert.equal(r.stdout, TEXT);
    // Buffered (no callbacks): the daemon decodes the whole kept output at once.
    assert.equal((await sbx.commands.run(['cat', FILE])).stdout, TEXT);
  });

  it('raw NDJSON: every stdout event is whole characters', async () => {
    const events = await ndjson(d, 'POST', `/v1/sandboxes/${sbx.id}/commands`, { cmd: ['cat', FILE], stream: true });
    for (const e of events.filter((x) => x.type === 'stdout')) assert.equal(e.data.includes('\uFFFD'), false);
    assert.equal(joined(events, 'stdout'), TEXT);
    assert.equal(events.at(-1).type, 'exit');
  });

  it('a follower of a background process gets the kept output and the live output as one text', async () => {
    const bg = await api(d.url, 'POST', `/v1/sandboxes/${sbx.id}/commands`, {
      // The kept part is under the 64 KiB a follower is replayed (REPLAY_BYTES).
      cmd: ['sh', '-c', `head -c 50000 ${FILE}; sleep 0.3; tail -c 220000 ${FILE}`],
      background: true,
      maxOutputBytes: 16 * 1024 * 1024,
    });
    assert.equal(bg.status, 202, bg.text);
    await new Promise((r) => setTimeout(r, 150)); // the first part is kept by then; the rest comes live
    const events = await ndjson(d, 'GET', `/v1/sandboxes/${sbx.id}/commands/${bg.json.pid}/stream`);
    assert.equal(joined(events, 'stdout'), TEXT);
  });

  it('a follower that joins after more than the replay was written starts on a whole character', async () => {
    const bg = await api(d.url, 'POST', `/v1/sandboxes/${sbx.id}/commands`, { cmd: ['sh', '-c', `cat ${FILE}; printf x; sleep 30`], background: true });
    assert.equal(bg.status, 202, bg.text);
    await new Promise((r) => setTimeout(r, 300));
    const ac = new AbortController();
    const r = await fetch(`${d.url}/v1/sandboxes/${sbx.id}/commands/${bg.json.pid}/stream`, { headers: authHeaders(d.url), signal: ac.signal });
    const reader = r.body!.getReader();
    let text = '';
    // The replay is the first stdout event (after `start`).
    while (!/"type":"stdout".*\n/.test(text)) {
      const { value, done } = await reader.read();
      if (done) break;
      text += Buffer.from(value).toString('utf8');
    }
    ac.abort();
    const first = text.split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((e) => e.type === 'stdout');
    assert.ok(first, text.slice(0, 300));
    assert.ok(!first.data.includes('\uFFFD'), 'no replacement character');
    // 270,001 bytes: the last 65,536 start 3 bytes into a 9-byte group, inside a '€'.
    assert.ok(`${TEXT}x`.endsWith(first.data), 'the replay is the end of the output so far');
    assert.ok(first.data.length > 20_000);
    await api(d.url, 'DELETE', `/v1/sandboxes/${sbx.id}/commands/${bg.json.pid}`);
  });

  it('base64: bytes that are not UTF-8 come through exactly, buffered, streamed and waited for', async () => {
    const buffered = await sbx.commands.run(['cat', '/tmp/random.bin'], { encoding: 'base64' });
    assert.equal(buffered.encoding, 'base64');
    assert.deepEqual(Buffer.from(buffered.stdout, 'base64'), random);

    const pieces: Buffer[] = [];
    const streamed = await sbx.commands.run(['cat', '/tmp/random.bin'], { encoding: 'base64', onStdout: (s) => void pieces.push(Buffer.from(s, 'base64')) });
    assert.deepEqual(Buffer.concat(pieces), random);
    assert.deepEqual(Buffer.from(streamed.stdout, 'base64'), random);

    const events = await ndjson(d, 'POST', `/v1/sandboxes/${sbx.id}/commands`, { cmd: ['cat', '/tmp/random.bin'], stream: true, encoding: 'base64' });
    assert.ok(events.filter((e) => e.type === 'stdout').every((e) => e.encoding === 'base64'));
    assert.deepEqual(Buffer.concat(events.filter((e) => e.type === 'stdout').map((e) => Buffer.from(e.data, 'base64'))), random);

    const h = await sbx.commands.run(['cat', '/tmp/random.bin'], { background: true, encoding: 'base64' });
    assert.deepEqual(Buffer.from((await h.wait()).stdout, 'base64'), random);
    // The same process as text: lossy, and says nothing about base64.
    const asText = await api(d.url, 'GET', `/v1/sandboxes/${sbx.id}/commands/${h.pid}/wait`);
    assert.equal(asText.json.encoding, undefined);
    assert.ok(asText.json.stdout.includes('\uFFFD'));
  });

  it('a result cut by maxOutputBytes ends on a whole character', async () => {
    const r = await sbx.commands.run(['cat', FILE], { maxOutputBytes: 1000 }); // 1000 = 111 x 9 + 1: cuts an é
    assert.equal(r.stdoutTruncated, true);
    assert.equal(r.stdout, TEXT.slice(0, 111 * 4));
    const raw = await api(d.url, 'POST', `/v1/sandboxes/${sbx.id}/commands`, { cmd: ['cat', FILE], maxOutputBytes: 1000 });
    assert.equal(raw.json.stdout, TEXT.slice(0, 111 * 4));
  });

  it('asking for an unknown encoding is a 400', async () => {
    const r = await api(d.url, 'POST', `/v1/sandboxes/${sbx.id}/commands`, { cmd: 'true', encoding: 'latin1' });
    assert.equal(r.status, 400);
    assert.equal(r.json.error.code, 'invalid_argument');
  });
});
