/**
 * Abuse battery, load on the daemon: CPU hogs, a stdout flood and a file download. The
 * sandboxes may burn their own quota; the daemon's API and the other tenants
 * must keep answering within a bound, and the daemon's memory must not follow
 * the flood. Figures are printed (the note records them); the asserted bounds
 * are loose enough for a busy CI machine and tight enough to catch a daemon
 * that starves or buffers the whole flood.
 *
 * Under microvm each sandbox is a QEMU process: the hogs are guest vCPUs
 * spinning (QEMU's threads in the sandbox's host cgroup, which the CPU check
 * reads), and the flood crosses the VM's virtio-serial port and the daemon's
 * mux relay, which runs in the daemon's event loop (ADR 0017): the daemon
 * parses the VM's frames as well. A 64 MiB file download is the same kind of
 * flood at the transport's full rate.
 */
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { api, authHeaders } from '../helpers/daemon.js';
import { assertDaemonAnswers, assertSandboxUsable, attack, createSandbox, forEachIsolation, per, sh, startBattery, stopBattery, type Battery } from './helpers.js';

let b: Battery;
const B = () => b;

/** API round trip bounds under load (ms). A quiet run measures ~3 ms p50. */
const LOADED_P50_MS = 50;
const LOADED_P99_MS = 250;
/**
 * Under gvisor and microvm the quiet sandbox's exec is itself CPU work outside the daemon that competes with the
 * hogs for the host's cores: gVisor's Sentry serves its syscalls in user space, a microVM runs it on an emulated
 * CPU (TCG, ~7x slower). Its exec+list is bounded looser there (measured under CPU hogs on a busy 2-core host:
 * gvisor p50 54-162 ms, p99 566-2193 ms; microvm p50 31-167 ms, p99 213-990 ms): the p99 then says the quiet
 * sandbox still answers within seconds. The daemon alone (a list) is held to the container's bounds.
 */
const SLOW_LOADED_P50_MS = 400;
const SLOW_LOADED_P99_MS = 5000;
/**
 * The daemon alone (a list) under microVM hogs: its p50 keeps the container's bound, its p99 gets a second. Two
 * VMs whose emulated vCPUs spin on every core leave the host's scheduler less slack than container hogs do
 * (measured p99 11-159 ms over several runs, then 359 ms once in a full suite run, over the container's 250).
 */
const VM_HOGS_LIST_P99_MS = 1000;

const execFileP = promisify(execFile);

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

/** Host CPU time so far (all cores, USER_HZ ticks): busy and total, from /proc/stat. */
function hostCpu(): { busy: number; total: number } {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.reduce((a, x) => a + x, 0);
  return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), total };
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

forEachIsolation('security: load on the daemon', (isolation) => {
  let quiet: string;
  before(async () => {
    b = await startBattery(isolation);
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
    const vm = b.isolation === 'microvm';
    const slow = b.isolation !== 'container';
    // Fewer samples under gvisor and microvm: each exec there takes 50-150 ms under the hogs, 300 took 95 s.
    const idle = await latency(slow ? 20 : 40, probeApi);
    // Enough hogs to saturate the host twice over: each sandbox may use every core.
    const hogs: string[] = [];
    for (let i = 0; i < 2; i++) {
      const id = await createSandbox(b, { probes: [], resources: { cpus: cores } });
      hogs.push(id);
      for (let j = 0; j < cores; j++) await sh(b, id, 'while :; do :; done', { background: true, timeoutMs: 120_000 });
    }
    await new Promise((r) => setTimeout(r, 500)); // let the scheduler settle under load
    const cpu0 = hogs.map(cpuUsage);
    const host0 = hostCpu();
    const w0 = performance.now();
    const loaded = await latency(slow ? 100 : 300, probeApi);
    const listOnly = slow ? await latency(100, async () => assert.equal((await api(b.url, 'GET', '/v1/sandboxes')).status, 200)) : null;
    const wall = (performance.now() - w0) / 1000;
    const burnt = hogs.reduce((s, id, i) => s + (cpuUsage(id) - cpu0[i]!), 0) / 1e9;
    const host1 = hostCpu();
    const hostBusy = (host1.busy - host0.busy) / Math.max(1, host1.total - host0.total);
    for (const id of hogs) await api(b.url, 'DELETE', `/v1/sandboxes/${id}`);
    console.log(
      `CPU hog (${hogs.length} sandboxes x ${cores} spinners on ${cores} cores, hogs used ${burnt.toFixed(2)} CPU-s in ${wall.toFixed(2)} s, host ${(hostBusy * 100).toFixed(0)}% busy): ` +
        `idle exec+list ${fmt(idle)}; loaded ${fmt(loaded)}${listOnly ? `; loaded list alone ${fmt(listOnly)}` : ''}`,
    );
    // The hogs really held the CPUs while we measured (else the bound proves nothing). Under microvm the quiet
    // sandbox's exec is itself CPU work (emulated) competing with the hogs' vCPU threads, and so is anything else on
    // a shared host: there, what matters is that the host's CPUs were saturated and the hogs took a real share.
    if (vm) {
      assert.ok(hostBusy > 0.75, `the host was only ${(hostBusy * 100).toFixed(0)}% busy under the hogs`);
      assert.ok(burnt > wall * cores * 0.1, `hogs used only ${burnt.toFixed(2)} CPU-s in ${wall.toFixed(2)} s on ${cores} cores`);
    } else {
      assert.ok(burnt > wall * cores * 0.25, `hogs used only ${burnt.toFixed(2)} CPU-s in ${wall.toFixed(2)} s on ${cores} cores`);
    }
    const [p50Bound, p99Bound] = slow ? [SLOW_LOADED_P50_MS, SLOW_LOADED_P99_MS] : [LOADED_P50_MS, LOADED_P99_MS];
    assert.ok(loaded.p50 < p50Bound, `API p50 ${loaded.p50.toFixed(1)} ms under CPU load (bound ${p50Bound} ms)`);
    assert.ok(loaded.p99 < p99Bound, `API p99 ${loaded.p99.toFixed(1)} ms under CPU load (bound ${p99Bound} ms)`);
    if (listOnly) {
      assert.ok(listOnly.p50 < LOADED_P50_MS, `list p50 ${listOnly.p50.toFixed(1)} ms under CPU load (bound ${LOADED_P50_MS} ms)`);
      const listP99Bound = vm ? VM_HOGS_LIST_P99_MS : LOADED_P99_MS;
      assert.ok(listOnly.p99 < listP99Bound, `list p99 ${listOnly.p99.toFixed(1)} ms under CPU load (bound ${listP99Bound} ms)`);
    }
    await assertSandboxUsable(b, quiet);
  }, { timeout: 240_000 });

  attack(B, 'stdout flood (1 GiB, 256 MiB under gvisor and microvm) to a buffered result: bounded result with a truncation flag, daemon memory flat, others answer', async () => {
    const flooder = await createSandbox(b, { probes: [] });
    const limit = 1024 * 1024;
    // The daemon keeps maxOutputBytes and drops the rest, so the whole flood crosses the agent transport. The writer
    // is dd with 64 KiB blocks: busybox head writes small blocks, each an emulated syscall in a microVM, and drained
    // there at 4-9 MiB/s (64 MiB of it into `cat` alone took 4.8 s in the guest) against ~49 MiB/s for dd, so the
    // flood measured the guest's CPU rather than the transport, and took most of a minute. From gVisor a flood drains
    // at ~14 MiB/s (with head): 1 GiB did not finish within the command's 120 s there. 256 MiB is still 256 times
    // what is kept.
    const floodMiB = per(b, { container: 1024, gvisor: 256, microvm: 256 });
    const rssBefore = daemonRss();
    let peak = rssBefore;
    const sampler = setInterval(() => (peak = Math.max(peak, daemonRss())), 50);
    const t0 = performance.now();
    const flood = api(b.url, 'POST', `/v1/sandboxes/${flooder}/commands`, {
      cmd: `dd if=/dev/zero bs=65536 count=${floodMiB * 16} 2>/dev/null; echo done >&2`,
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
      `${floodMiB} MiB flood: drained in ${seconds.toFixed(1)} s (${(floodMiB / seconds).toFixed(0)} MiB/s), daemon RSS peak +${grownMiB.toFixed(1)} MiB; ` +
        `exec+list meanwhile ${fmt(during)}`,
    );
    assert.ok(grownMiB < 96, `daemon RSS grew ${grownMiB.toFixed(1)} MiB during a ${floodMiB} MiB flood`);
    const p99Bound = b.isolation !== 'container' ? SLOW_LOADED_P99_MS : LOADED_P99_MS;
    assert.ok(during.p99 < p99Bound, `API p99 ${during.p99.toFixed(1)} ms during the flood (bound ${p99Bound} ms)`);
    await assertDaemonAnswers(b);
    await assertSandboxUsable(b, flooder);
  }, { timeout: 300_000 });

  attack(B, 'a 64 MiB file download drains through the agent transport with daemon memory flat; others answer', async () => {
    // Under microvm every byte crosses the VM's virtio-serial port and the daemon's mux relay, which runs in the
    // daemon's event loop (ADR 0017): this is the flood that reaches the daemon at the port's full rate.
    const src = await createSandbox(b, { probes: [] });
    const size = 64 * 1024 * 1024;
    const mk = await sh(b, src, `head -c ${size} /dev/zero > /tmp/big && wc -c < /tmp/big`, { timeoutMs: 120_000 });
    assert.equal(mk.stdout.trim(), String(size));
    const rssBefore = daemonRss();
    let peak = rssBefore;
    const sampler = setInterval(() => (peak = Math.max(peak, daemonRss())), 50);
    const t0 = performance.now();
    // curl, not fetch: receiving 64 MiB on this process's event loop would delay the probes measured meanwhile.
    const auth = Object.entries(authHeaders(b.url)).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
    const url = `${b.url}/v1/sandboxes/${src}/files?path=${encodeURIComponent('/tmp/big')}`;
    const download = execFileP('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code} %{size_download}', ...auth, url]);
    const during = await latency(20, probeApi);
    const got = await download;
    const seconds = (performance.now() - t0) / 1000;
    clearInterval(sampler);
    assert.equal(got.stdout, `200 ${size}`);
    const grownMiB = (peak - rssBefore) / 1048576;
    console.log(
      `64 MiB download: ${seconds.toFixed(1)} s (${(64 / seconds).toFixed(0)} MiB/s), daemon RSS peak +${grownMiB.toFixed(1)} MiB; exec+list meanwhile ${fmt(during)}`,
    );
    assert.ok(grownMiB < 96, `daemon RSS grew ${grownMiB.toFixed(1)} MiB during a 64 MiB download`);
    const p99Bound = b.isolation !== 'container' ? SLOW_LOADED_P99_MS : LOADED_P99_MS;
    assert.ok(during.p99 < p99Bound, `API p99 ${during.p99.toFixed(1)} ms during the download (bound ${p99Bound} ms)`);
    await assertDaemonAnswers(b);
    await assertSandboxUsable(b, src);
  }, { timeout: 180_000 });
}, { microvm: true });
