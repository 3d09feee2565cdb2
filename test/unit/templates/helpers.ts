import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { dataPaths, type DataPaths } from '../../../src/config/index.js';
import { openDb, type Db } from '../../../src/store/db.js';

export interface TempData {
  dir: string;
  paths: DataPaths;
  db: Db;
  cleanup(): void;
}

/** A fresh data directory with a real SQLite file in it. */
export function tempData(prefix = 'capsule-tpl-'): TempData {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const paths = dataPaths(dir);
  const db = openDb(paths.db);
  return {
    dir,
    paths,
    db,
    cleanup() {
      db.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export const isRoot = process.getuid?.() === 0;

/** Every entry below `dir` (root included) whose uid or gid is below `base`. */
export function unshifted(dir: string, base: number): string[] {
  const bad: string[] = [];
  const walk = (p: string): void => {
    const st = fs.lstatSync(p);
    if (st.uid < base || st.gid < base) bad.push(p);
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) walk(path.join(p, e));
  };
  walk(dir);
  return bad;
}
