/**
 * The OCI driver's side of the `gateway` network mode: starting a sandbox's
 * relay (native/capsule-netrelay.c), finding it again after a daemon restart,
 * stopping it, and opening streams to ports inside the sandbox through its
 * control socket. The relay holds the sandbox's only way out; see its header
 * comment for what it sets up inside the sandbox's network namespace.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Duplex } from 'node:stream';
import { RuntimeError, SandboxError } from '../errors/index.js';
import type { Launcher } from './launcher.js';
import { runTool } from './overlay.js';
import type { GatewaySpec } from './types.js';

/** Built by scripts/build-native.mjs: dist/src/runtime/netrelay.js -> dist/native/capsule-netrelay. */
export const RELAY_PATH = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'native', 'capsule-netrelay');

/** Exit codes of capsule-netrelay before it is ready, with what to do about each. */
const HINTS: Record<number, string> = {
  2: 'the daemon called capsule-netrelay wrongly; this is a bug',
  3: 'the sandbox stopped while its network was being set up',
  4: 'the daemon must run as root to enter a sandbox network namespace',
  5: 'the kernel refused the routes (is IPv4 on?)',
  6: 'check the data dir (unix socket paths) and open-file limits',
  7: 'install nftables (apt-get install nftables) and check that the kernel has nf_tables with NAT (CONFIG_NFT_REDIR)',
};

export interface RelayPaths {
  control: string;
  pidFile: string;
}

export interface StartRelay extends RelayPaths {
  id: string;
  /** Host pid of the sandbox's init: its network namespace is entered, and its exit ends the relay. */
  initPid: number;
  gateway: GatewaySpec;
  /** cgroup.procs of the sandbox, to name the process behind each connection. */
  procsFile: string | null;
  launcher: Launcher | null;
  binary?: string;
  /**
   * A microVM: the namespace is its QEMU's (initPid), holding the VM's tap `name`; the guest is at
   * `guest` on a /30 with the tap (see the relay's header comment).
   */
  tap?: { name: string; guest: string };
}

export async function startRelay(o: StartRelay): Promise<void> {
  const bin = o.binary ?? RELAY_PATH;
  await fsp.mkdir(path.dirname(o.control), { recursive: true, mode: 0o700 });
  const args = [
    '--id', o.id,
    '--pid', String(o.initPid),
    '--gateway', o.gateway.socket,
    '--control', o.control,
    '--resolver', o.gateway.resolver,
    '--pidfile', o.pidFile,
    ...(o.procsFile ? ['--procs', o.procsFile] : []),
    ...(o.tap ? ['--tap', o.tap.name, '--guest', o.tap.guest] : []),
  ];
  let r: { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string };
  try {
    r = o.launcher
      ? await o.launcher.run([bin, ...args], { captureStdout: true, stderrToFile: true, timeoutMs: 15_000 })
      : { ...(await runTool(bin, args, 15_000, 'run `npm run build`')), stdout: 'ready' };
  } catch (e) {
    throw new RuntimeError(`cannot start the network relay of sandbox ${o.id}: ${(e as Error).message}; run \`npm run build\``, { id: o.id }, { cause: e });
  }
  if (r.code !== 0 || !/ready/.test(r.stdout)) {
    const hint = r.code !== null ? HINTS[r.code] : undefined;
    const why = r.stderr.trim().replace(/^capsule-netrelay: /, '').slice(0, 500) || `exit ${r.code ?? r.signal}`;
    throw new RuntimeError(`could not set up the network of sandbox ${o.id}: ${why}${hint ? `; ${hint}` : ''}`, { id: o.id, exitCode: r.code });
  }
}

/** The relay's pid when it runs (checked against its command line, so a reused pid is never taken for it). */
export function relayPid(pidFile: string): number | null {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
  } catch {
    return null;
  }
  if (!Number.isInteger(pid) || pid <= 0) return null;
  try {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmd.includes('capsule-netrelay') ? pid : null;
  } catch {
    return null;
  }
}

/** Stop a sandbox's relay (when it is still there) and remove its files. Idempotent. */
export async function stopRelay(p: RelayPaths): Promise<void> {
  const pid = relayPid(p.pidFile);
  if (pid !== null) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
    // It is reaped by the launcher (a subreaper); wait until it is gone so leak checks see nothing.
    for (let i = 0; i < 100 && relayPid(p.pidFile) !== null && isLive(pid); i++) await new Promise((r) => setTimeout(r, 10));
  }
  await fsp.rm(p.control, { force: true });
  await fsp.rm(p.pidFile, { force: true });
}

function isLive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/\) [ZX] /.test(stat);
  } catch {
    return false;
  }
}

/**
 * A stream to 127.0.0.1:`port` inside the sandbox, through the relay's control socket.
 * The relay answers one status byte first: 0, or the errno of its connect. The stream is handed
 * over paused: the caller attaches its reader, then resumes it.
 */
export function connectThroughRelay(control: string, id: string, port: number, signal?: AbortSignal): Promise<Duplex> {
  return new Promise<Duplex>((resolve, reject) => {
    const s = net.connect(control);
    let settled = false;
    const done = (err: Error | null) => {
      if (settled) return;
      settled = true;
      s.removeListener('data', onData);
      signal?.removeEventListener('abort', onAbort);
      if (err) {
        s.destroy();
        reject(err);
      } else {
        resolve(s);
      }
    };
    const onAbort = () => done(new SandboxError(`connecting to port ${port} of sandbox ${id} was aborted`, { id, port }));
    const onData = (b: Buffer) => {
      const status = b[0]!;
      if (b.length > 1) s.unshift(b.subarray(1));
      if (status === 0) {
        s.pause();
        done(null);
        return;
      }
      const why = status === 111 ? 'nothing listens there (connection refused)' : `connect failed (errno ${status})`;
      done(new SandboxError(`port ${port} of sandbox ${id}: ${why}`, { id, port, errno: status }));
    };
    s.once('connect', () => s.write(`PORT ${port}\n`));
    s.on('data', onData);
    s.once('error', (e: NodeJS.ErrnoException) =>
      done(new SandboxError(`sandbox ${id} has no network relay (${e.code ?? e.message})`, { id, port })),
    );
    s.once('close', () => done(new SandboxError(`the network relay of sandbox ${id} closed the connection to port ${port}`, { id, port })));
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
