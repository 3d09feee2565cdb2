/**
 * SQL for sandbox and process records. The manager owns the lifecycle; this
 * file only maps rows to objects and back.
 */
import type { Db } from '../store/db.js';
import { statementCache, type Statements } from '../store/statements.js';
import type { ResourceLimits } from '../config/index.js';

export type SandboxStateName = 'creating' | 'running' | 'killed' | 'expired' | 'failed';

export interface SandboxRecord {
  id: string;
  template: string;
  state: SandboxStateName;
  owner: string | null;
  createdAt: number;
  expiresAt: number;
  envs: Record<string, string>;
  metadata: Record<string, string>;
  resources: ResourceLimits;
  endedAt: number | null;
  endReason: string | null;
}

interface SandboxRow {
  id: string;
  template: string;
  state: SandboxStateName;
  owner: string | null;
  created_at: number;
  expires_at: number;
  envs: string;
  metadata: string;
  resources: string;
  ended_at: number | null;
  end_reason: string | null;
}

export interface ProcessRecord {
  sandboxId: string;
  pid: number;
  argv: string[];
  cwd: string | null;
  startedAt: number;
  endedAt: number | null;
  exitCode: number | null;
}

function fromRow(r: SandboxRow): SandboxRecord {
  return {
    id: r.id,
    template: r.template,
    state: r.state,
    owner: r.owner,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    envs: JSON.parse(r.envs) as Record<string, string>,
    metadata: JSON.parse(r.metadata) as Record<string, string>,
    resources: JSON.parse(r.resources) as ResourceLimits,
    endedAt: r.ended_at,
    endReason: r.end_reason,
  };
}

export class SandboxStore {
  private readonly sql: Statements;

  constructor(private readonly db: Db) {
    this.sql = statementCache(db);
  }

  /** Runs `fn` as one write transaction: one WAL commit for all its statements. */
  inTransaction(fn: () => void): void {
    this.db.transaction(fn)();
  }

  insert(s: SandboxRecord): void {
    this
      .sql(
        `INSERT INTO sandboxes (id, template, state, owner, created_at, expires_at, envs, metadata, resources)
         VALUES (@id, @template, @state, @owner, @createdAt, @expiresAt, @envs, @metadata, @resources)`,
      )
      .run({
        ...s,
        envs: JSON.stringify(s.envs),
        metadata: JSON.stringify(s.metadata),
        resources: JSON.stringify(s.resources),
      });
  }

  get(id: string): SandboxRecord | undefined {
    const row = this.sql('SELECT * FROM sandboxes WHERE id = ?').get(id) as SandboxRow | undefined;
    return row ? fromRow(row) : undefined;
  }

  listByStates(states: readonly SandboxStateName[]): SandboxRecord[] {
    const marks = states.map(() => '?').join(',');
    const rows = this
      .sql(`SELECT * FROM sandboxes WHERE state IN (${marks}) ORDER BY created_at`)
      .all(...states) as SandboxRow[];
    return rows.map(fromRow);
  }

  listAll(limit = 1000): SandboxRecord[] {
    const rows = this.sql('SELECT * FROM sandboxes ORDER BY created_at DESC LIMIT ?').all(limit) as SandboxRow[];
    return rows.map(fromRow);
  }

  setState(id: string, state: SandboxStateName): void {
    this.sql('UPDATE sandboxes SET state = ? WHERE id = ?').run(state, id);
  }

  /** Final states only; returns false when the sandbox had already ended. */
  end(id: string, state: 'killed' | 'expired' | 'failed', reason: string, at: number): boolean {
    const r = this
      .sql(
        `UPDATE sandboxes SET state = ?, end_reason = ?, ended_at = ?
         WHERE id = ? AND state IN ('creating', 'running')`,
      )
      .run(state, reason, at, id);
    return r.changes > 0;
  }

  setExpiry(id: string, expiresAt: number): void {
    this.sql('UPDATE sandboxes SET expires_at = ? WHERE id = ?').run(expiresAt, id);
  }

  expiredRunning(now: number): string[] {
    const rows = this
      .sql(`SELECT id FROM sandboxes WHERE state = 'running' AND expires_at <= ?`)
      .all(now) as Array<{ id: string }>;
    return rows.map((r) => r.id);
  }

  insertProcess(p: ProcessRecord): void {
    this
      .sql(
        `INSERT OR REPLACE INTO processes (sandbox_id, pid, argv, cwd, started_at, ended_at, exit_code)
         VALUES (?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(p.sandboxId, p.pid, JSON.stringify(p.argv), p.cwd, p.startedAt, p.endedAt, p.exitCode);
  }

  endProcess(sandboxId: string, pid: number, exitCode: number, at: number): void {
    this
      .sql('UPDATE processes SET exit_code = ?, ended_at = ? WHERE sandbox_id = ? AND pid = ? AND ended_at IS NULL')
      .run(exitCode, at, sandboxId, pid);
  }

  getProcess(sandboxId: string, pid: number): ProcessRecord | undefined {
    const r = this.sql('SELECT * FROM processes WHERE sandbox_id = ? AND pid = ?').get(sandboxId, pid) as
      | { sandbox_id: string; pid: number; argv: string; cwd: string | null; started_at: number; ended_at: number | null; exit_code: number | null }
      | undefined;
    if (!r) return undefined;
    return {
      sandboxId: r.sandbox_id,
      pid: r.pid,
      argv: JSON.parse(r.argv) as string[],
      cwd: r.cwd,
      startedAt: r.started_at,
      endedAt: r.ended_at,
      exitCode: r.exit_code,
    };
  }

  deleteProcesses(sandboxId: string): void {
    this.sql('DELETE FROM processes WHERE sandbox_id = ?').run(sandboxId);
  }
}
