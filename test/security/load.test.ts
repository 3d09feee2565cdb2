/**
 * Abuse battery, load on the daemon: CPU hogs and a 1 GB stdout flood. The
 * sandboxes may burn their own quota; the daemon's API and the other tenants
 * must keep answering within a bound, and the daemon's memory must not follow
 * the flood. Figures are printed (the note records them); the asserted bounds
 * are loose enough for a busy CI machine and tight enough to catch a daemon
 * that starves or buffers the whole flood.
 */
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { api } from '../helpers/daemon.js';
import { assertDaemonAnswers, assertSandboxUsable, attack, createSandbox, sh, startBattery, stopBattery, type Battery } from './helpers.js';

let b: Battery;
const B = () => b;

/** API round trip bounds under load (ms). A quiet run measures ~3 ms p50. */
const LOADED_P50_MS = 50;
const LOADED_P99_MS = 250;

function daemonRss(): number {
  const status = fs.readFileSync(`/proc/${b.d.child.pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024;
}

/** CPU time (ns) a sandbox's cgroup has used so far (cgroup v1 cpuacct). */
function cpuUsage(id: string): number {
  for (const dir of ['cpuacct', 'cpu,cpuacct']) {
    try {
      return Number(fs.readFileSync(`/sys/fs/cgroup/${dir}/capsule/${id}/cpuacct.usage`, 'utf8'));
    } catch {
      /* try the next mount name */
    }
  }
  throw new Error(`no cpuacct.usage for sandbox ${id}`);
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** `n` timed calls of `fn`, one after another; returns p50/p99 in ms. */
async function latency(n: number, fn: () => Promise<void>): Promise<{ p50: number; p99: number; max: number }> {
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  ms.sort((x, y) => x - y);
  return { p50: pct(ms, 50), p99: pct(ms, 99), max: ms.at(-1)! };
}

const fmt = (l: { p50: number; p99: number; max: number }) => `p50 ${l.p50.toFixed(1)} ms, p99 ${l.p99.toFixed(1)} ms, max ${l.max.toFixed(1)} ms`;

describe('security: load on the daemon', () => {
  let quiet: string;
  before(async () => {
    b = await startBattery();
    quiet = await createSandbox(b, { probes: [] });
  });
  after(async () => {
    await stopBattery(b);
  });

  /** An exec in the quiet sandbox plus a list: the two calls an agent makes most. */
  const probeApi = async () => {
    const r = await api(b.url, 'POST', `/v1/sandboxes/${quiet}/commands`, { cmd: ['true'] });
    assert.equal(r.status, 200, r.text);
    assert.equal((await api(b.url, 'GET', '/v1/sandboxes')).status, 200);
  };

  attack(B, 'CPU hogs: sandboxes spinning on every core leave the API and other sandboxes answering within a bound', async () => {
    const cores = os.cpus().length;
    const idle = await latency(40, probeApi);
    // Enough hogs to saturate the host twice over: each sandbox may use every core.
    const hogs: string[] = [];
    for (let i = 0; i < 2; i++) {
      const id = await createSandbox(b, { probes: [], resources: { cpus: cores } });
      hogs.push(id);
      for (let j = 0; j < cores; j++) await sh(b, id, 'while :; do :; done', { background: true, timeoutMs: 120_000 });
    }
    await new Promise((r) => setTimeout(r, 500)); // let the scheduler settle under load
    const cpu0 = hogs.map(cpuUsage);
    const w0 = performance.now();
    const loaded = await latency(300, probeApi);
    const wall = (performance.now() - w0) / 1000;
    const burnt = hogs.reduce((s, id, i) => s + (cpuUsage(id) - cpu0[i]!), 0) / 1e9;
    for (const id of hogs) await api(b.url, 'DELETE', `/v1/sandboxes/${id}`);
    console.log(
      `CPU hog (${hogs.length} sandboxes x ${cores} spinners on ${cores} cores, hogs used ${burnt.toFixed(2)} CPU-s in ${wall.toFixed(2)} s): ` +
        `idle exec+list ${fmt(idle)}; loaded ${fmt(loaded)}`,
    );
    // The hogs really held the CPUs while we measured (else the bound proves nothing).
    assert.ok(burnt > wall * cores * 0.25, `hogs used only ${burnt.toFixed(2)} CPU-s in ${wall.toFixed(2)} s on ${cores} cores`);
    assert.ok(loaded.p50 < LOADED_P50_MS, `API p50 ${loaded.p50.toFixed(1)} ms under CPU load (bound ${LOADED_P50_MS} ms)`);
    assert.ok(loaded.p99 < LOADED_P99_MS, `API p99 ${loaded.p99.toFixed(1)} ms under CPU load (bound ${LOADED_P99_MS} ms)`);
    await assertSandboxUsable(b, quiet);
  });

  attack(B, '1 GB stdout flood to a buffered result: bounded result with a truncation flag, daemon memory flat, others answer', async () => {
    const flooder = await createSandbox(b, { probes: [] });
    const limit = 1024 * 1024;
    const rssBefore = daemonRss();
    let peak = rssBefore;
    const sampler = setInterval(() => (peak = Math.max(peak, daemonRss())), 50);
    const t0 = performance.now();
    const flood = api(b.url, 'POST', `/v1/sandboxes/${flooder}/commands`, {
      cmd: 'head -c 1073741824 /dev/zero; echo done >&2',
      maxOutputBytes: limit,
      timeoutMs: 120_000,
    });
    // Measured while the gigabyte passes through the daemon.
    const during = await latency(30, probeApi);
    const r = await flood;
    const seconds = (performance.now() - t0) / 1000;
    clearInterval(sampler);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.exitCode, 0);
    assert.equal(r.json.stdoutTruncated, true, 'the result says it was cut');
    assert.equal(Buffer.byteLength(r.json.stdout), limit, 'exactly maxOutputBytes kept');
    assert.equal(r.json.stderr, 'done\n', 'the tail of the other stream still arrives');
    const grownMiB = (peak - rssBefore) / 1048576;
    console.log(
      `1 GiB flood: drained in ${seconds.toFixed(1)} s (${(1024 / seconds).toFixed(0)} MiB/s), daemon RSS peak +${grownMiB.toFixed(1)} MiB; ` +
        `exec+list meanwhile ${fmt(during)}`,
    );
    assert.ok(grownMiB < 96, `daemon RSS grew ${grownMiB.toFixed(1)} MiB during a 1 GiB flood`);
    assert.ok(during.p99 < LOADED_P99_MS, `API p99 ${during.p99.toFixed(1)} ms during the flood`);
    await assertDaemonAnswers(b);
    await assertSandboxUsable(b, flooder);
  });
});
