/**
 * Helpers shared by the CLI commands: the connection from the global
 * options, output (tables, JSON, raw writes with backpressure) and parsing
 * of repeated K=V options and durations.
 */
import { once } from 'node:events';
import fs from 'node:fs';
import { dataDirFromEnv, dataPaths } from '../config/index.js';
import type { Command } from 'commander';
import type { ConnectionOptions } from '../sdk/index.js';

/** A mistake in how the CLI was called: reported with exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/**
 * Connection options from the global --url / --api-key (the SDK falls back to
 * CAPSULE_URL / CAPSULE_API_KEY). For a daemon on this machine with neither
 * set, the admin key the daemon left in its data directory is used when this
 * user can read it (root, as the daemon runs).
 */
export function connection(cmd: Command): ConnectionOptions {
  const g = cmd.optsWithGlobals<{ url?: string; apiKey?: string }>();
  const conn: ConnectionOptions = {};
  if (g.url) conn.apiUrl = g.url;
  if (g.apiKey) conn.apiKey = g.apiKey;
  else if (!process.env.CAPSULE_API_KEY) {
    const local = localAdminKey(g.url ?? process.env.CAPSULE_URL);
    if (local) conn.apiKey = local;
  }
  return conn;
}

function localAdminKey(url: string | undefined): string | undefined {
  try {
    const host = new URL(url ?? 'http://127.0.0.1:7878').hostname;
    if (!['127.0.0.1', 'localhost', '[::1]', '::1'].includes(host)) return undefined;
    const key = fs.readFileSync(dataPaths(dataDirFromEnv()).adminKey, 'utf8').trim();
    return key || undefined;
  } catch {
    return undefined;
  }
}

/** Commander collector for repeatable `--env K=V` style options. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** Turn ['A=1', 'B=x=y'] into {A: '1', B: 'x=y'}. */
export function parsePairs(pairs: string[] | undefined, flag: string): Record<string, string> | undefined {
  if (!pairs || pairs.length === 0) return undefined;
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const eq = p.indexOf('=');
    if (eq <= 0) throw new UsageError(`${flag} expects KEY=VALUE, got "${p}"`);
    out[p.slice(0, eq)] = p.slice(eq + 1);
  }
  return out;
}

/** Seconds (fractions allowed) as given on the command line → ms. */
export function secondsToMs(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0) throw new UsageError(`${flag} expects a number of seconds, got "${value}"`);
  return Math.round(n * 1000);
}

export function parseNumber(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new UsageError(`${flag} expects a number, got "${value}"`);
  return n;
}

/** Write to stdout/stderr, waiting for 'drain' when the pipe is full. */
export async function writeOut(stream: NodeJS.WriteStream, data: string | Uint8Array): Promise<void> {
  if (!stream.write(data)) await once(stream, 'drain');
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Left-aligned columns separated by two spaces; the header row is upper-case. */
export function printTable(headers: string[], rows: string[][]): void {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  const out = [line(headers.map((h) => h.toUpperCase())), ...rows.map(line)];
  process.stdout.write(`${out.join('\n')}\n`);
}

/** 2024-05-01T10:00:00.123Z → 2024-05-01 10:00:00 (UTC). */
export function shortTime(iso: string | undefined): string {
  if (!iso) return '-';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, '');
}

/** How far in the future (or past) a time is: "in 4m59s", "2h ago". */
export function relativeTime(iso: string | undefined, now = Date.now()): string {
  if (!iso) return '-';
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return iso;
  const diff = Math.round((t - now) / 1000);
  const abs = Math.abs(diff);
  const h = Math.floor(abs / 3600);
  const m = Math.floor((abs % 3600) / 60);
  const s = abs % 60;
  const text = h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(s).padStart(2, '0')}s` : `${s}s`;
  return diff >= 0 ? `in ${text}` : `${text} ago`;
}

export function humanSize(bytes: number | undefined): string {
  if (bytes === undefined) return '-';
  const units = ['B', 'K', 'M', 'G', 'T'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v}${units[i]}` : `${v.toFixed(v < 10 ? 1 : 0)}${units[i]}`;
}
