/**
 * Rows of templates users define (built or imported), one per (owner, name):
 * the definition, the layer chain a sandbox stacks, the config its commands
 * get, and the state of its last build. Built-in templates live in
 * TemplateService; this table only holds user templates.
 */
import { randomBytes } from 'node:crypto';
import type { Db } from '../store/db.js';
import { statementCache, type Statements } from '../store/statements.js';
import type { TemplateConfig, TemplateDefinition } from '../schemas/templates.js';

export type UserTemplateStatus = 'building' | 'ready' | 'failed';

export interface UserTemplate {
  id: string;
  owner: string;
  name: string;
  definition: TemplateDefinition | { import: string };
  status: UserTemplateStatus;
  /** Digests, lowest first; null until a build succeeded. */
  layers: string[] | null;
  config: TemplateConfig | null;
  sizeBytes: number | null;
  builtAt: number | null;
  error: string | null;
  createdAt: number;
  buildId: string | null;
}

interface Row {
  id: string;
  owner: string;
  name: string;
  definition: string;
  status: UserTemplateStatus;
  layers: string | null;
  config: string | null;
  size_bytes: number | null;
  built_at: number | null;
  error: string | null;
  created_at: number;
  build_id: string | null;
}

function fromRow(r: Row): UserTemplate {
  return {
    id: r.id,
    owner: r.owner,
    name: r.name,
    definition: JSON.parse(r.definition) as UserTemplate['definition'],
    status: r.status,
    layers: r.layers ? (JSON.parse(r.layers) as string[]) : null,
    config: r.config ? (JSON.parse(r.config) as TemplateConfig) : null,
    sizeBytes: r.size_bytes,
    builtAt: r.built_at,
    error: r.error,
    createdAt: r.created_at,
    buildId: r.build_id,
  };
}

/** Owners are stored as strings: no owner at all (authentication off) is ''. */
export function ownerKey(owner: string | null): string {
  return owner ?? '';
}

export class UserTemplates {
  private readonly sql: Statements;

  constructor(db: Db) {
    this.sql = statementCache(db);
  }

  get(owner: string, name: string): UserTemplate | undefined {
    const r = this.sql('SELECT * FROM user_templates WHERE owner = ? AND name = ?').get(owner, name) as Row | undefined;
    return r ? fromRow(r) : undefined;
  }

  /** Every template of one owner, or of all owners (null). */
  list(owner: string | null): UserTemplate[] {
    const rows =
      owner === null
        ? (this.sql('SELECT * FROM user_templates ORDER BY owner, name').all() as Row[])
        : (this.sql('SELECT * FROM user_templates WHERE owner = ? ORDER BY name').all(owner) as Row[]);
    return rows.map(fromRow);
  }

  /** Record that a build of (owner, name) started; the row keeps its last good layers until the build succeeds. */
  building(owner: string, name: string, definition: UserTemplate['definition'], buildId: string): void {
    this.sql(
      `INSERT INTO user_templates (id, owner, name, definition, status, created_at, build_id)
       VALUES (@id, @owner, @name, @definition, 'building', @now, @buildId)
       ON CONFLICT(owner, name) DO UPDATE SET definition = @definition, status = 'building', error = NULL, build_id = @buildId`,
    ).run({ id: `tpl_${randomBytes(8).toString('hex')}`, owner, name, definition: JSON.stringify(definition), now: Date.now(), buildId });
  }

  ready(owner: string, name: string, layers: string[], config: TemplateConfig, sizeBytes: number): void {
    this.sql(
      `UPDATE user_templates SET status = 'ready', layers = ?, config = ?, size_bytes = ?, built_at = ?, error = NULL
       WHERE owner = ? AND name = ?`,
    ).run(JSON.stringify(layers), JSON.stringify(config), sizeBytes, Date.now(), owner, name);
  }

  /** A failed build leaves the previous layers in service (status stays ready when there were some). */
  failed(owner: string, name: string, error: string): void {
    this.sql(
      `UPDATE user_templates SET status = CASE WHEN layers IS NULL THEN 'failed' ELSE 'ready' END,
         error = CASE WHEN layers IS NULL THEN @error ELSE 'last build failed: ' || @error END
       WHERE owner = @owner AND name = @name`,
    ).run({ owner, name, error: error.slice(0, 4000) });
  }

  remove(owner: string, name: string): boolean {
    return this.sql('DELETE FROM user_templates WHERE owner = ? AND name = ?').run(owner, name).changes === 1;
  }

  /** Digests any template references (for layer pruning). */
  referencedLayers(): Set<string> {
    const out = new Set<string>();
    for (const r of this.sql('SELECT layers FROM user_templates WHERE layers IS NOT NULL').all() as Array<{ layers: string }>) {
      for (const d of JSON.parse(r.layers) as string[]) out.add(d);
    }
    return out;
  }

  /** At start: builds cut off by a restart failed. */
  recover(): string[] {
    const cut = this.sql(`SELECT owner, name FROM user_templates WHERE status = 'building'`).all() as Array<{ owner: string; name: string }>;
    for (const t of cut) this.failed(t.owner, t.name, 'the build was interrupted by a daemon restart; build it again');
    return cut.map((t) => `${t.owner}/${t.name}`);
  }
}
