/**
 * The in-sandbox drivers (interpreter/*.py, *.js in the repository) and how a
 * context starts one. They are installed into a sandbox on first use, under a
 * path named by their digest, so a daemon upgrade never runs an old driver and
 * any template with the language's runtime can host contexts.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AgentConnection, StreamSpec } from '../agent/types.js';
import type { CodeLanguage } from '../schemas/code.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** dist/src/interpreter → the repository's interpreter/ folder. */
export const DRIVER_DIR = path.resolve(here, '..', '..', '..', 'interpreter');

/** Stream ids of a driver process (docs/adr/0011-code-interpreter.md). */
export const DRIVER_STREAMS = { diag: 1, requests: 3, events: 4 } as const;
export const DRIVER_STREAM_TABLE: StreamSpec[] = [
  // fd 1 and 2 until the driver captures them itself; afterwards only what escapes capture (a crash, a Node child).
  { id: DRIVER_STREAMS.diag, kind: 'pipe-out', fds: [1, 2] },
  { id: DRIVER_STREAMS.requests, kind: 'pipe-in', fds: [3] },
  { id: DRIVER_STREAMS.events, kind: 'pipe-out', fds: [4] },
];

interface DriverFile {
  name: string;
  bytes: Buffer;
}

interface Drivers {
  files: DriverFile[];
  /** The sandbox directory they are installed in: /opt/capsule/interpreter/<digest>. */
  dir: string;
}

let loaded: Drivers | undefined;

function drivers(): Drivers {
  if (!loaded) {
    const files = ['python_driver.py', 'node_driver.js'].map((name) => ({ name, bytes: fs.readFileSync(path.join(DRIVER_DIR, name)) }));
    const h = createHash('sha256');
    for (const f of files) h.update(f.name).update('\0').update(f.bytes).update('\0');
    loaded = { files, dir: `/opt/capsule/interpreter/${h.digest('hex').slice(0, 16)}` };
  }
  return loaded;
}

/** The runtime a language needs in the sandbox, and the driver that runs it. */
export function driverArgv(language: CodeLanguage, contextId: string, isDefault: boolean): string[] {
  const { dir } = drivers();
  const tail = [language, contextId, isDefault ? 'default' : 'named'];
  switch (language) {
    case 'python':
    case 'bash':
      return ['python3', `${dir}/python_driver.py`, ...tail];
    case 'javascript':
    case 'typescript':
      return ['node', `${dir}/node_driver.js`, ...tail];
  }
}

/** The program a language's driver runs on, for messages. */
export function runtimeOf(language: CodeLanguage): string {
  return language === 'javascript' || language === 'typescript' ? 'node' : 'python3';
}

const installed = new WeakMap<AgentConnection, Promise<void>>();

/**
 * Writes the drivers into the sandbox once per agent connection (a reconnect
 * writes them again: cheap, and the files may be gone after a stop and start).
 * Root owns them (the agent writes as root), so the sandbox's user cannot change them.
 */
export function installDrivers(conn: AgentConnection): Promise<void> {
  let p = installed.get(conn);
  if (!p) {
    const { files, dir } = drivers();
    p = (async () => {
      for (const f of files) await conn.writeFile(`${dir}/${f.name}`, f.bytes, { mode: 0o644 });
    })();
    p.catch(() => installed.delete(conn));
    installed.set(conn, p);
  }
  return p;
}
