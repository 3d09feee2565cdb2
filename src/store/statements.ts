/**
 * Prepared statements, compiled once per SQL text. better-sqlite3's
 * `prepare` parses and plans the SQL on every call (about 20 µs each), which
 * showed up on every request of the exec hot path; the SQL texts used are a
 * small fixed set, so the cache stays small.
 */
import type Database from 'better-sqlite3';
import type { Db } from './db.js';

export type Statements = (sql: string) => Database.Statement;

/** A function that returns the prepared statement for a SQL text, preparing it on first use. */
export function statementCache(db: Db): Statements {
  const cache = new Map<string, Database.Statement>();
  return (sql) => {
    let s = cache.get(sql);
    if (!s) {
      s = db.prepare(sql);
      cache.set(sql, s);
    }
    return s;
  };
}
