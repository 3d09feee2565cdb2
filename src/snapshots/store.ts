/** SQL for filesystem snapshots: one row each, unique per owner and name when named (migration 7). */
import type { Db } from '../store/db.js';
import { statementCache, type Statements } from '../store/statements.js';
import type { TemplateConfig } from '../schemas/templates.js';

export interface SnapshotRecord {
  id: string;
  owner: string | null;
  name: string | null;
  /** The sandbox it was taken of. */
  sandboxId: string;
  /** The template that sandbox was started from; sandboxes started from the snapshot get it too. */
  template: string;
  /** The snapshot that sandbox was itself started from. */
  parentSnapshot: string | null;
  /** Its own layer's digest (kind `snapshot` in the layer store). */
  layer: string;
  /** Every layer a sandbox started from it stacks, lowest first, its own last. */
  chain: string[];
  /** What sandboxes started from it get: the source sandbox's env, working directory, user, setuid. */
  config: TemplateConfig;
  metadata: Record<string, string>;
  sizeBytes: number;
  createdAt: number;
}

interface Row {
  id: string;
  owner: string | null;
  name: string | null;
  sandbox_id: string;
  template: string;
  parent_snapshot: string | null;
  layer: string;
  chain: string;
  config: string;
  metadata: string;
  size_bytes: number;
  created_at: number;
}

const fromRow = (r: Row): SnapshotRecord => ({
  id: r.id,
  owner: r.owner,
  name: r.name,
  sandboxId: r.sandbox_id,
  template: r.template,
  parentSnapshot: r.parent_snapshot,
  layer: r.layer,
  chain: JSON.parse(r.chain) as string[],
  config: JSON.parse(r.config) as TemplateConfig,
  metadata: JSON.parse(r.metadata) as Record<string, string>,
  sizeBytes: r.size_bytes,
  createdAt: r.created_at,
});

export class SnapshotStore {
  private readonly sql: Statements;

  constructor(db: Db) {
    this.sql = statementCache(db);
  }

  /** False when the owner already has a snapshot of that name. */
  insert(s: SnapshotRecord): boolean {
    const r = this
      .sql(
        `INSERT OR IGNORE INTO snapshots (id, owner, name, sandbox_id, template, parent_snapshot, layer, chain, config, metadata, size_bytes, created_at)
         VALUES (@id, @owner, @name, @sandboxId, @template, @parentSnapshot, @layer, @chain, @config, @metadata, @sizeBytes, @createdAt)`,
      )
      .run({ ...s, chain: JSON.stringify(s.chain), config: JSON.stringify(s.config), metadata: JSON.stringify(s.metadata) });
    return r.changes === 1;
  }

  byId(id: string): SnapshotRecord | undefined {
    const r = this.sql('SELECT * FROM snapshots WHERE id = ?').get(id) as Row | undefined;
    return r ? fromRow(r) : undefined;
  }

  byName(owner: string | null, name: string): SnapshotRecord | undefined {
    const r = this.sql("SELECT * FROM snapshots WHERE COALESCE(owner, '') = COALESCE(?, '') AND name = ?").get(owner, name) as Row | undefined;
    return r ? fromRow(r) : undefined;
  }

  /** Every snapshot (`undefined`), or one owner's. */
  list(owner?: string | null): SnapshotRecord[] {
    const rows = (owner === undefined
      ? this.sql('SELECT * FROM snapshots ORDER BY created_at').all()
      : this.sql("SELECT * FROM snapshots WHERE COALESCE(owner, '') = COALESCE(?, '') ORDER BY created_at").all(owner)) as Row[];
    return rows.map(fromRow);
  }

  delete(id: string): void {
    this.sql('DELETE FROM snapshots WHERE id = ?').run(id);
  }

  /** Every layer id any snapshot's chain names (layer pruning keeps them). */
  referencedLayers(): Set<string> {
    const out = new Set<string>();
    for (const r of this.sql('SELECT chain FROM snapshots').all() as Array<{ chain: string }>) {
      for (const d of JSON.parse(r.chain) as string[]) out.add(d);
    }
    return out;
  }
}
