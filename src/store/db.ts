/**
 * The embedded state store: one SQLite file (WAL) in the data directory.
 * Migrations are numbered SQL steps applied in order inside a transaction.
 */
import Database from 'better-sqlite3';
import fs from 'node:fs';
import path from 'node:path';

export type Db = Database.Database;

const MIGRATIONS: string[] = [
  `CREATE TABLE sandboxes (
     id TEXT PRIMARY KEY,
     template TEXT NOT NULL,
     state TEXT NOT NULL,
     owner TEXT,
     created_at INTEGER NOT NULL,
     expires_at INTEGER NOT NULL,
     envs TEXT NOT NULL,
     metadata TEXT NOT NULL,
     resources TEXT NOT NULL,
     ended_at INTEGER,
     end_reason TEXT
   );
   CREATE INDEX sandboxes_state ON sandboxes(state);
   CREATE TABLE templates (
     name TEXT PRIMARY KEY,
     status TEXT NOT NULL,
     rootfs TEXT NOT NULL,
     size_bytes INTEGER,
     built_at INTEGER,
     error TEXT
   );
   CREATE TABLE processes (
     sandbox_id TEXT NOT NULL,
     pid INTEGER NOT NULL,
     argv TEXT NOT NULL,
     cwd TEXT,
     tag TEXT,
     started_at INTEGER NOT NULL,
     ended_at INTEGER,
     exit_code INTEGER,
     PRIMARY KEY (sandbox_id, pid)
   );`,
  `CREATE TABLE api_keys (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL,
     owner TEXT NOT NULL,
     hash TEXT NOT NULL UNIQUE,
     admin INTEGER NOT NULL,
     max_sandboxes INTEGER,
     max_memory_mb INTEGER,
     rate_per_minute INTEGER,
     created_at INTEGER NOT NULL,
     revoked_at INTEGER
   );
   CREATE INDEX sandboxes_owner ON sandboxes(owner);`,
  // The state machine (src/sandboxes/lifecycle.ts): when the state last changed, and which
  // runtime backend holds the sandbox (several can serve one daemon).
  `ALTER TABLE sandboxes ADD COLUMN state_changed_at INTEGER;
   ALTER TABLE sandboxes ADD COLUMN runtime TEXT;
   UPDATE sandboxes SET state_changed_at = COALESCE(ended_at, created_at);`,
  // Templates as stacks of content-addressed layers (src/layers/store.ts, src/templates/user-templates.ts),
  // and build jobs that outlive their request (src/templates/jobs.ts).
  `CREATE TABLE layers (
     digest TEXT PRIMARY KEY,
     parent TEXT,
     kind TEXT NOT NULL,
     size_bytes INTEGER NOT NULL,
     entries INTEGER NOT NULL,
     created_at INTEGER NOT NULL,
     description TEXT NOT NULL
   );
   CREATE TABLE user_templates (
     id TEXT PRIMARY KEY,
     owner TEXT NOT NULL,
     name TEXT NOT NULL,
     definition TEXT NOT NULL,
     status TEXT NOT NULL,
     layers TEXT,
     config TEXT,
     size_bytes INTEGER,
     built_at INTEGER,
     error TEXT,
     created_at INTEGER NOT NULL,
     build_id TEXT,
     UNIQUE (owner, name)
   );
   CREATE TABLE template_builds (
     id TEXT PRIMARY KEY,
     owner TEXT NOT NULL,
     name TEXT NOT NULL,
     status TEXT NOT NULL,
     step INTEGER NOT NULL,
     steps INTEGER NOT NULL,
     phase TEXT,
     started_at INTEGER NOT NULL,
     ended_at INTEGER,
     error TEXT
   );
   ALTER TABLE sandboxes ADD COLUMN defaults TEXT;`,
  // Pause/stop and retention (src/sandboxes/lifecycle-service.ts): the sandbox's lifecycle policy (JSON),
  // the lifetime it was given, and what was left of it when it was paused or stopped (its clock stops).
  // Named volumes (src/volumes): one row each, unique per owner and name; a sandbox lists those it attaches.
  `ALTER TABLE sandboxes ADD COLUMN lifecycle TEXT;
   ALTER TABLE sandboxes ADD COLUMN timeout_ms INTEGER;
   ALTER TABLE sandboxes ADD COLUMN remaining_ms INTEGER;
   ALTER TABLE sandboxes ADD COLUMN volumes TEXT;
   CREATE TABLE volumes (
     id TEXT PRIMARY KEY,
     owner TEXT,
     name TEXT NOT NULL,
     size_mb INTEGER NOT NULL,
     created_at INTEGER NOT NULL
   );
   CREATE UNIQUE INDEX volumes_owner_name ON volumes(COALESCE(owner, ''), name);`,
  // Networking (src/network): each sandbox's egress policy, public ports and port token, and the egress ledger.
  `CREATE TABLE sandbox_network (
     sandbox_id TEXT PRIMARY KEY,
     egress TEXT NOT NULL,
     public_ports TEXT NOT NULL,
     token TEXT NOT NULL,
     gateway INTEGER NOT NULL DEFAULT 0
   );
   CREATE TABLE egress_log (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     seq INTEGER NOT NULL,
     sandbox_id TEXT NOT NULL,
     at INTEGER NOT NULL,
     protocol TEXT NOT NULL,
     name TEXT,
     address TEXT,
     port INTEGER,
     pid INTEGER,
     command TEXT,
     verdict TEXT NOT NULL,
     rule TEXT NOT NULL,
     reason TEXT NOT NULL,
     bytes_up INTEGER NOT NULL,
     bytes_down INTEGER NOT NULL,
     duration_ms INTEGER,
     state TEXT NOT NULL
   );
   CREATE INDEX egress_log_sandbox_seq ON egress_log(sandbox_id, seq);`,
  // Filesystem snapshots (src/snapshots): one row each, unique per owner and name when named. A sandbox
  // records the layer chain it stacks (ids, lowest first: what a snapshot of it builds on) and the
  // snapshot it was started from (a snapshot cannot be deleted while a live sandbox was started from it).
  `ALTER TABLE sandboxes ADD COLUMN layers TEXT;
   ALTER TABLE sandboxes ADD COLUMN snapshot TEXT;
   CREATE INDEX sandboxes_snapshot ON sandboxes(snapshot) WHERE snapshot IS NOT NULL;
   CREATE TABLE snapshots (
     id TEXT PRIMARY KEY,
     owner TEXT,
     name TEXT,
     sandbox_id TEXT NOT NULL,
     template TEXT NOT NULL,
     parent_snapshot TEXT,
     layer TEXT NOT NULL,
     chain TEXT NOT NULL,
     config TEXT NOT NULL,
     metadata TEXT NOT NULL,
     size_bytes INTEGER NOT NULL,
     created_at INTEGER NOT NULL
   );
   CREATE UNIQUE INDEX snapshots_owner_name ON snapshots(COALESCE(owner, ''), name) WHERE name IS NOT NULL;`,
  // Sandbox logs (src/sandboxes/events.ts): lifecycle and command events, at most a bounded number per sandbox.
  `CREATE TABLE sandbox_events (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     sandbox_id TEXT NOT NULL,
     at INTEGER NOT NULL,
     level INTEGER NOT NULL,
     event TEXT NOT NULL,
     message TEXT NOT NULL,
     fields TEXT NOT NULL
   );
   CREATE INDEX sandbox_events_sandbox_seq ON sandbox_events(sandbox_id, seq);`,
];

export function openDb(file: string): Db {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('busy_timeout = 5000');
  db.pragma('foreign_keys = ON');
  migrate(db);
  return db;
}

function migrate(db: Db): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}
