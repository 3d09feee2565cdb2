/** Runs the real agent binary as an ordinary host process for tests. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { connectAgent } from '../../../src/agent/client.js';
import type { AgentConnection } from '../../../src/agent/types.js';

/** dist/test/unit/agent/helpers.js -> dist/agent/capsule-agent */
export const AGENT_BINARY = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../agent/capsule-agent');

export interface RunningAgent {
  dir: string;
  socketPath: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

/** dist/test/unit/agent/helpers.js -> the repository root. */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');

/**
 * Agents of other protocol versions, built from these sources with agent/protocol.h's macros overridden
 * (scripts/build-agent.mjs --out): what a sandbox started by an older (or newer) daemon runs.
 */
export const AGENT_VARIANTS = {
  /** Protocol 1.0 as the first release spoke it: no HELLO extension, no features. */
  'v1.0': ['-DPROTO_MINOR=0', '-DAGENT_FEATURES=0', '-DAGENT_VERSION="capsule-agent/0.1.0"'],
  /** Protocol 1.1 (exec-streams, large-data, read-to-size): no terminals, no watches. */
  'v1.1': ['-DPROTO_MINOR=1', '-DAGENT_FEATURES=7', '-DAGENT_VERSION="capsule-agent/0.2.0"'],
  /** Protocol 1.2 (adds pty, watch): no extended attributes. */
  'v1.2': ['-DPROTO_MINOR=2', '-DAGENT_FEATURES=31', '-DAGENT_VERSION="capsule-agent/0.3.0"'],
  /** A later major version: a daemon of major 1 must refuse it. */
  'v2.0': ['-DPROTO_MAJOR=2', '-DPROTO_MINOR=0', '-DAGENT_VERSION="capsule-agent/2.0.0"'],
} as const;

/** Builds a variant into dir (once per dir and name); returns the binary's path. */
export function buildAgentVariant(dir: string, name: keyof typeof AGENT_VARIANTS): string {
  const out = path.join(dir, `capsule-agent-${name}`);
  if (fs.existsSync(out)) return out;
  const r = spawnSync(process.execPath, [path.join(REPO_ROOT, 'scripts', 'build-agent.mjs'), '--out', out, ...AGENT_VARIANTS[name]], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`building agent variant ${name} failed: ${r.stderr}${r.stdout}`);
  return out;
}

export async function startAgent(opts: { binary?: string } = {}): Promise<RunningAgent> {
  const binary = opts.binary ?? AGENT_BINARY;
  if (!fs.existsSync(binary)) throw new Error(`agent binary missing at ${binary}: run node scripts/build-agent.mjs`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-agent-test-'));
  const socketPath = path.join(dir, 'agent.sock');
  const child = spawn(binary, ['--listen', socketPath], { stdio: ['ignore', 'inherit', 'inherit'] });
  const deadline = Date.now() + 5000;
  // The socket file appears at bind, before listen: wait until a connection is accepted, not just for the file.
  while (!(fs.existsSync(socketPath) && (await accepts(socketPath)))) {
    if (child.exitCode !== null) throw new Error(`agent exited with ${child.exitCode}`);
    if (Date.now() > deadline) throw new Error('agent did not listen on its socket');
    await new Promise((r) => setTimeout(r, 10));
  }
  return {
    dir,
    socketPath,
    child,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const gone = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await gone;
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The agent, one connection to it, and an empty directory `root` for a test's files (in the agent's temp dir). */
export interface AgentWithRoot {
  agent: RunningAgent;
  conn: AgentConnection;
  root: string;
}

export async function startAgentWithRoot(): Promise<AgentWithRoot> {
  const agent = await startAgent();
  const conn = await connectAgent(agent.socketPath);
  const root = path.join(agent.dir, 'root');
  fs.mkdirSync(root);
  return { agent, conn, root };
}

export async function stopAgentWithRoot(a: AgentWithRoot): Promise<void> {
  a.conn.close();
  await a.agent.stop();
}

function accepts(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export function collect(p: { on(ev: 'stdout' | 'stderr', l: (b: Buffer) => void): unknown }): { stdout: () => string; stderr: () => string } {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  p.on('stdout', (b) => out.push(b));
  p.on('stderr', (b) => err.push(b));
  return { stdout: () => Buffer.concat(out).toString('utf8'), stderr: () => Buffer.concat(err).toString('utf8') };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
