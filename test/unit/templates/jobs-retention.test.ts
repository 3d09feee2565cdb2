/**
 * Build history retention (BuildJobs.purgeFinished, run by src/sandboxes/history.ts) over a real SQLite
 * file and real log files: finished builds past the cut-off go with their log files; running builds and
 * each template's latest build (its info names it) stay.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { openDb, type Db } from '../../../src/store/db.js';
import { BuildJobs } from '../../../src/templates/jobs.js';

describe('BuildJobs.purgeFinished', () => {
  let dir: string;
  let db: Db;
  let jobs: BuildJobs;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-jobs-'));
    db = openDb(path.join(dir, 'capsule.db'));
    jobs = new BuildJobs(db, path.join(dir, 'builds'));
  });
  after(() => {
    db.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const logOf = (id: string) => path.join(dir, 'builds', `${id}.log`);

  it('deletes old finished builds and their logs, keeps running ones and the latest build of each template', async () => {
    const build = async (name: string, fail = false) => {
      const j = jobs.start('alice', name, `${name}-${Math.random()}`, 1, async (r) => {
        r.progress(1, 1, 'run echo');
        r.log(1, 'output\n');
        if (fail) throw new Error('step failed');
      });
      await j.done;
      return j.id;
    };
    const old = await build('a');
    const failed = await build('b', true);
    const latest = await build('c');
    let release!: () => void;
    const running = jobs.start('alice', 'd', 'd-key', 1, (r) => {
      r.progress(1, 1, 'waiting');
      return new Promise<void>((res) => (release = res));
    });
    db.prepare(
      `INSERT INTO user_templates (id, owner, name, definition, status, created_at, build_id) VALUES ('t1', 'alice', 'c', '{}', 'ready', 0, ?)`,
    ).run(latest);
    for (const id of [old, failed, latest]) assert.ok(fs.existsSync(logOf(id)), 'each finished build has a log file');

    assert.equal(jobs.purgeFinished(Date.now() + 1000), 2);
    for (const id of [old, failed]) {
      assert.equal(fs.existsSync(logOf(id)), false, 'its log file is gone');
      assert.throws(() => jobs.get(null, id), /not found/);
    }
    assert.equal(jobs.get(null, latest).info().status, 'succeeded');
    assert.ok(fs.existsSync(logOf(latest)));
    assert.equal(jobs.get(null, running.id).info().status, 'running');
    assert.equal(jobs.purgeFinished(0), 0, 'nothing ended before the epoch');
    release();
    await running.done;
  });
});
