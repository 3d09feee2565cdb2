/**
 * The layer store: content-addressed, read-only directory trees that
 * sandboxes stack as overlay lower layers. Templates are chains of layers
 * (a base, then one layer per build step); imported OCI images and, later,
 * filesystem snapshots are layers in the same store, with one reference
 * count: a layer is removed only when no template, snapshot or sandbox uses it.
 *
 * On disk, below `<data>/layers`:
 *   <hex>/            the layer's tree (owned by the sandboxes' mapped id range),
 *                     used directly as an overlay lower dir; never written after commit
 *   .tmp-<random>/    a layer being made (removed on failure and by recover())
 * A layer's row in SQLite says what it is (kind, parent, size, how it was made).
 *
 * A layer tree holds only what its step changed: overlay whiteouts (0:0
 * character devices) and opaque directories (xattr trusted.overlay.opaque=y)
 * stand for deletions, exactly as in an overlay upper dir, so a chain stacks
 * without being merged. Creating either needs root, which the daemon is.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Db } from '../store/db.js';
import { statementCache, type Statements } from '../store/statements.js';
import { removeTree } from '../templates/fsutil.js';
import { InvalidArgumentError, NotFoundError } from '../errors/index.js';

export type LayerKind = 'base' | 'step' | 'import' | 'flatten' | 'snapshot';

export interface LayerRecord {
  /** `sha256:<hex>` of the layer's key (what made it), not of its bytes. */
  digest: string;
  /** The layer below it in the chain it was made in; null for a base. */
  parent: string | null;
  kind: LayerKind;
  sizeBytes: number;
  entries: number;
  createdAt: number;
  /** How it was made, for people: "run: make -C /app", "import layer 2 of image x". */
  description: string;
}

interface LayerRow {
  digest: string;
  parent: string | null;
  kind: LayerKind;
  size_bytes: number;
  entries: number;
  created_at: number;
  description: string;
}

const DIGEST_RE = /^sha256:([0-9a-f]{64})$/;

/** The digest of a layer's key: any JSON-serialisable description of what made it. */
export function layerDigest(key: unknown): string {
  return `sha256:${createHash('sha256').update(canonicalJson(key)).digest('hex')}`;
}

/** JSON with object keys sorted, so equal keys hash equally whatever their construction order. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const entries = Object.entries(v as Record<string, unknown>)
      .filter(([, x]) => x !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonicalJson(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

function hexOf(digest: string): string {
  const m = DIGEST_RE.exec(digest);
  if (!m) throw new InvalidArgumentError(`not a layer digest: ${digest}`);
  return m[1]!;
}

function fromRow(r: LayerRow): LayerRecord {
  return {
    digest: r.digest,
    parent: r.parent,
    kind: r.kind,
    sizeBytes: r.size_bytes,
    entries: r.entries,
    createdAt: r.created_at,
    description: r.description,
  };
}

/** A layer being made: fill `dir`, then commit it under its digest (or abort). */
export interface LayerDraft {
  readonly dir: string;
  commit(meta: { digest: string; parent: string | null; kind: LayerKind; description: string }): Promise<LayerRecord>;
  abort(): Promise<void>;
}

export class LayerStore {
  private readonly sql: Statements;

  constructor(
    private readonly db: Db,
    /** `<data>/layers`. */
    readonly root: string,
  ) {
    this.sql = statementCache(db);
  }

  /** The layer's tree on disk (whether or not it exists). */
  path(digest: string): string {
    return path.join(this.root, hexOf(digest));
  }

  get(digest: string): LayerRecord | undefined {
    const r = this.sql('SELECT * FROM layers WHERE digest = ?').get(digest) as LayerRow | undefined;
    return r ? fromRow(r) : undefined;
  }

  /** The layer, which must exist (row and tree). */
  require(digest: string): LayerRecord {
    const rec = this.get(digest);
    if (!rec || !fs.existsSync(this.path(digest))) throw new NotFoundError(`layer ${digest} is not in the store`, { digest });
    return rec;
  }

  /** A ready layer (row and tree), for cache hits. */
  has(digest: string): boolean {
    return this.get(digest) !== undefined && fs.existsSync(this.path(digest));
  }

  list(): LayerRecord[] {
    return (this.sql('SELECT * FROM layers ORDER BY created_at').all() as LayerRow[]).map(fromRow);
  }

  /** Start a layer: an empty directory next to the final ones (same filesystem, so commit is a rename). */
  async draft(): Promise<LayerDraft> {
    await fsp.mkdir(this.root, { recursive: true });
    // The sandboxes' mapped root must traverse to the lower dirs; it can list nothing here.
    await fsp.chmod(this.root, 0o711);
    const dir = path.join(this.root, `.tmp-${randomBytes(6).toString('hex')}`);
    await fsp.mkdir(dir, { mode: 0o755 });
    let done = false;
    return {
      dir,
      commit: async (meta) => {
        if (done) throw new Error('layer draft already finished');
        done = true;
        const final = this.path(meta.digest);
        const { bytes, entries } = await treeUsage(dir);
        if (fs.existsSync(final)) {
          // Made by a concurrent build of the same step: keep the first one.
          await removeTree(dir);
        } else {
          await fsp.rename(dir, final);
        }
        const rec: LayerRecord = {
          digest: meta.digest,
          parent: meta.parent,
          kind: meta.kind,
          sizeBytes: bytes,
          entries,
          createdAt: Date.now(),
          description: meta.description.slice(0, 1000),
        };
        this.sql(
          `INSERT OR IGNORE INTO layers (digest, parent, kind, size_bytes, entries, created_at, description)
           VALUES (@digest, @parent, @kind, @sizeBytes, @entries, @createdAt, @description)`,
        ).run(rec);
        return this.get(meta.digest) ?? rec;
      },
      abort: async () => {
        if (done) return;
        done = true;
        await removeTree(dir);
      },
    };
  }

  /** Record a tree that lives outside the store as a layer (the built-in templates' base trees). */
  registerExternal(rec: Omit<LayerRecord, 'createdAt'>): void {
    this.sql(
      `INSERT OR IGNORE INTO layers (digest, parent, kind, size_bytes, entries, created_at, description)
       VALUES (@digest, @parent, @kind, @sizeBytes, @entries, @createdAt, @description)`,
    ).run({ ...rec, createdAt: Date.now() });
  }

  /**
   * Remove every layer that no reference holds and no sandbox sits on.
   * `referenced`: digests named by templates and snapshots; `inUse(path)`:
   * whether a sandbox (running, paused or stopped) has the tree as a lower
   * layer. Returns the removed digests.
   */
  async prune(referenced: ReadonlySet<string>, inUse: (treePath: string) => boolean): Promise<string[]> {
    const removed: string[] = [];
    for (const l of this.list()) {
      if (referenced.has(l.digest) || l.kind === 'base') continue;
      const p = this.path(l.digest);
      if (fs.existsSync(p) && inUse(p)) continue;
      await removeTree(p);
      this.sql('DELETE FROM layers WHERE digest = ?').run(l.digest);
      removed.push(l.digest);
    }
    return removed;
  }

  /** At start: drafts cut off by a restart are deleted; rows whose tree vanished are dropped. */
  async recover(): Promise<{ removedDrafts: string[]; droppedRows: string[] }> {
    const removedDrafts: string[] = [];
    const droppedRows: string[] = [];
    for (const e of await fsp.readdir(this.root).catch(() => [] as string[])) {
      if (!e.startsWith('.tmp-')) continue;
      await removeTree(path.join(this.root, e));
      removedDrafts.push(e);
    }
    for (const l of this.list()) {
      if (l.kind === 'base') continue; // base trees live with their built-in template
      if (!fs.existsSync(this.path(l.digest))) {
        this.sql('DELETE FROM layers WHERE digest = ?').run(l.digest);
        droppedRows.push(l.digest);
      }
    }
    return { removedDrafts, droppedRows };
  }
}

/** Disk usage (st_blocks, hard links once) and entry count of a tree, without following symlinks. */
export async function treeUsage(dir: string): Promise<{ bytes: number; entries: number }> {
  let bytes = 0;
  let entries = 0;
  const seen = new Set<string>();
  const stack = [dir];
  while (stack.length > 0) {
    const d = stack.pop()!;
    const list = await fsp.readdir(d, { withFileTypes: true });
    for (const e of list) {
      const p = path.join(d, e.name);
      const st = await fsp.lstat(p);
      entries++;
      if (st.nlink > 1 && !st.isDirectory()) {
        const k = `${st.dev}:${st.ino}`;
        if (seen.has(k)) continue;
        seen.add(k);
      }
      bytes += st.blocks * 512;
      if (st.isDirectory()) stack.push(p);
    }
  }
  return { bytes, entries };
}
