/** SQL for named volumes: one row each, unique per owner and name (migration 4). */
import type { Db } from '../store/db.js';
import { statementCache, type Statements } from '../store/statements.js';

export interface VolumeRecord {
  id: string;
  owner: string | null;
  name: string;
  sizeMb: number;
  createdAt: number;
}

interface VolumeRow {
  id: string;
  owner: string | null;
  name: string;
  size_mb: number;
  created_at: number;
}

const fromRow = (r: VolumeRow): VolumeRecord => ({ id: r.id, owner: r.owner, name: r.name, sizeMb: r.size_mb, createdAt: r.created_at });

export class VolumeStore {
  private readonly sql: Statements;

  constructor(db: Db) {
    this.sql = statementCache(db);
  }

  /** False when the owner already has a volume of that name. */
  insert(v: VolumeRecord): boolean {
    const r = this
      .sql('INSERT OR IGNORE INTO volumes (id, owner, name, size_mb, created_at) VALUES (@id, @owner, @name, @sizeMb, @createdAt)')
      .run(v);
    return r.changes === 1;
  }

  byName(owner: string | null, name: string): VolumeRecord | undefined {
    const r = this.sql("SELECT * FROM volumes WHERE COALESCE(owner, '') = COALESCE(?, '') AND name = ?").get(owner, name) as VolumeRow | undefined;
    return r ? fromRow(r) : undefined;
  }

  byId(id: string): VolumeRecord | undefined {
    const r = this.sql('SELECT * FROM volumes WHERE id = ?').get(id) as VolumeRow | undefined;
    return r ? fromRow(r) : undefined;
  }

  /** Every volume, or one owner's (`undefined`: all). */
  list(owner?: string | null): VolumeRecord[] {
    const rows = (owner === undefined
      ? this.sql('SELECT * FROM volumes ORDER BY created_at').all()
      : this.sql("SELECT * FROM volumes WHERE COALESCE(owner, '') = COALESCE(?, '') ORDER BY created_at").all(owner)) as VolumeRow[];
    return rows.map(fromRow);
  }

  delete(id: string): void {
    this.sql('DELETE FROM volumes WHERE id = ?').run(id);
  }
}
