/** Runs the real agent binary as an ordinary host process for tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** dist/test/unit/agent/helpers.js -> dist/agent/capsule-agent */
export const AGENT_BINARY = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../agent/capsule-agent');

export interface RunningAgent {
  dir: string;
  socketPath: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

export async function startAgent(): Promise<RunningAgent> {
  if (!fs.existsSync(AGENT_BINARY)) throw new Error(`agent binary missing at ${AGENT_BINARY}: run node scripts/build-agent.mjs`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-agent-test-'));
  const socketPath = path.join(dir, 'agent.sock');
  const child = spawn(AGENT_BINARY, ['--listen', socketPath], { stdio: ['ignore', 'inherit', 'inherit'] });
  const deadline = Date.now() + 5000;
  while (!fs.existsSync(socketPath)) {
    if (child.exitCode !== null) throw new Error(`agent exited with ${child.exitCode}`);
    if (Date.now() > deadline) throw new Error('agent did not create its socket');
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

export function collect(p: { on(ev: 'stdout' | 'stderr', l: (b: Buffer) => void): unknown }): { stdout: () => string; stderr: () => string } {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  p.on('stdout', (b) => out.push(b));
  p.on('stderr', (b) => err.push(b));
  return { stdout: () => Buffer.concat(out).toString('utf8'), stderr: () => Buffer.concat(err).toString('utf8') };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
