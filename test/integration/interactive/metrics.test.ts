/**
 * Per-sandbox metrics and the Prometheus endpoint against a real daemon and
 * real crun sandboxes: a CPU spinner shows near its limit, a 200 MiB
 * allocation shows in memory, the disk and pids are counted, and /metrics
 * parses with a Prometheus text parser, for admins only unless opened.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { api, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { Sandbox, type ConnectionOptions, type SandboxMetric } from '../../../src/sdk/index.js';

let d: TestDaemon;
let dataDir: string;
let conn: ConnectionOptions;
const MiB = 1024 * 1024;

/** Waits until a fresh sample passes `pred` (samples come every 500 ms in this suite). */
async function sampleWhere(sbx: Sandbox, pred: (m: SandboxMetric) => boolean, ms = 20_000): Promise<SandboxMetric> {
  const deadline = Date.now() + ms;
  const since = new Date();
  for (;;) {
    const ms_ = await sbx.getMetrics({ start: since });
    const hit = ms_.find(pred);
    if (hit) return hit;
    if (Date.now() > deadline) throw new Error(`no sample matched; the last: ${JSON.stringify(ms_.at(-1))}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

describe('metrics', () => {
  before(async () => {
    dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir, env: { CAPSULE_METRICS_INTERVAL_MS: '500' } });
    conn = { apiUrl: d.url };
  });
  after(async () => {
    await d?.stop();
    if (dataDir) await removeDataDir(dataDir);
  });

  it('shows a CPU spinner near its limit, a 200 MiB allocation, the disk and the pids', async () => {
    const sbx = await Sandbox.create({ ...conn, template: 'busybox', resources: { cpus: 0.5, memoryMb: 512, diskMb: 256 } });
    try {
      const idle = await sampleWhere(sbx, () => true);
      assert.equal(idle.cpuLimitPct, 50);
      assert.equal(idle.memLimitBytes, 512 * MiB);
      assert.ok(idle.diskQuotaBytes > 200 * MiB && idle.diskQuotaBytes <= 256 * MiB, `disk quota ${idle.diskQuotaBytes}`);
      assert.ok(idle.pidsLimit > 0);
      const spin = await sbx.commands.run('while :; do :; done', { background: true });
      // Two samples in a row near the 50% quota: a spinner is held at its limit, not above it.
      const busy = await sampleWhere(sbx, (m) => m.cpuUsedPct > 35);
      assert.ok(busy.cpuUsedPct <= 65, `cpu ${busy.cpuUsedPct}% with a 50% limit`);
      await spin.kill();
      // dd holds its 200 MiB buffer (filled from /dev/zero) while the pipe to sleep is full.
      const hog = await sbx.commands.run('dd if=/dev/zero bs=200M count=1 2>/dev/null | sleep 60', { background: true });
      const mem = await sampleWhere(sbx, (m) => m.memUsedBytes > 200 * MiB);
      assert.ok(mem.memUsedBytes < 400 * MiB, `memory ${mem.memUsedBytes}`);
      assert.ok(mem.memPeakBytes >= mem.memUsedBytes);
      assert.ok(mem.pids >= 3, `pids ${mem.pids}`);
      await hog.kill();
      await sbx.commands.run('dd if=/dev/zero of=/data.bin bs=1M count=50 2>/dev/null; sync');
      const disk = await sampleWhere(sbx, (m) => m.diskUsedBytes > 50 * MiB);
      assert.ok(disk.diskUsedBytes < disk.diskQuotaBytes);
      // History is oldest first, and a range narrows it.
      const all = await sbx.getMetrics();
      assert.ok(all.length >= 4);
      assert.deepEqual([...all].sort((a, b) => a.timestamp.localeCompare(b.timestamp)), all);
      assert.equal((await sbx.getMetrics({ start: new Date(Date.now() + 60_000) })).length, 0);
    } finally {
      await sbx.kill();
    }
    const ended = await api(d.url, 'GET', `/v1/sandboxes/${(await Sandbox.list({ ...conn, state: 'all' }))[0]!.id}/metrics`);
    assert.equal(ended.status, 200);
  });

  it('serves Prometheus text that parses, to admin keys only', async () => {
    const sbx = await Sandbox.create({ ...conn, template: 'busybox' });
    await sbx.commands.run('true');
    await api(d.url, 'GET', '/v1/sandboxes/sbx-000000000000'); // a not_found
    const r = await api(d.url, 'GET', '/metrics');
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers.get('content-type') ?? '', /^text\/plain/);
    const families = new Map(parsePrometheusTextFormat(r.text).map((f) => [f.name, f]));
    const value = (name: string, labels: Record<string, string>) =>
      Number(families.get(name)?.metrics.find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v))?.value);
    assert.ok(value('capsule_sandboxes', { state: 'running' }) >= 1);
    assert.ok(value('capsule_sandbox_creates_total', { template: 'busybox', outcome: 'ok', pooled: 'false' }) >= 1);
    assert.equal(families.get('capsule_sandbox_create_seconds')?.type, 'HISTOGRAM');
    // (This parser keeps a labelled histogram's buckets only.)
    assert.equal(families.get('capsule_exec_seconds')?.type, 'HISTOGRAM');
    assert.ok(Number(families.get('capsule_exec_seconds')?.metrics[0]?.buckets?.['+Inf']) >= 1);
    assert.match(r.text, /^capsule_exec_seconds_count\{mode="foreground"\} [1-9]/m);
    assert.ok(value('capsule_api_errors_total', { code: 'not_found' }) >= 1);
    for (const name of ['capsule_pool_size', 'capsule_pool_ready', 'capsule_template_builds_total']) assert.ok(families.has(name), name);
    // A key that is not an admin's is refused; no key at all too.
    const key = await api(d.url, 'POST', '/v1/keys', { name: 'user', owner: 'alice' });
    assert.equal(key.status, 201, key.text);
    assert.equal((await api(d.url, 'GET', '/metrics', undefined, { authorization: `Bearer ${key.json.key}` })).status, 403);
    assert.equal((await fetch(`${d.url}/metrics`)).status, 401);
    await sbx.kill();
  });

  it('--metrics-open serves it without a key', async () => {
    const dir = tempDataDir();
    fs.chmodSync(dir, 0o755);
    const open = await startTestDaemon({ dataDir: dir, args: ['--metrics-open'] });
    try {
      const r = await fetch(`${open.url}/metrics`);
      assert.equal(r.status, 200);
      assert.ok(parsePrometheusTextFormat(await r.text()).some((f) => f.name === 'capsule_sandboxes'));
      assert.equal((await fetch(`${open.url}/v1/sandboxes`)).status, 401, 'only /metrics is opened');
    } finally {
      await open.stop();
      await removeDataDir(dir);
    }
  });
});
