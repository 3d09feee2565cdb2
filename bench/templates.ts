/**
 * Scenario — templates: what building and using one's own template costs.
 *
 *  - template.rebuild-cached: an unchanged definition (copy + run + env) built
 *    again: every layer is a cache hit, so this is the request, the archive
 *    hashing in the SDK and the job. Compared with a plain GET of the template
 *    (the HTTP round trip floor of the same daemon).
 *  - template.build-new-step: the same definition with one new run step on
 *    top of cached layers: one build sandbox started, the step run, its
 *    changes exported into a new layer. Compared with raw crun's run -d + exec.
 *  - template.first-create: create + `echo hi` on a template built just
 *    before (its new layer never used by a sandbox yet), next to the same on
 *    the busybox built-in, interleaved.
 *  - template.base.cache-restore and template.base.cold (one sample each, on
 *    daemons of their own): the base template restored from the machine's
 *    cache (what a new data dir costs), and built with debootstrap and no cache
 *    (skipped with --quick).
 */
import fs from 'node:fs';
import path from 'node:path';
import { Sandbox, Template, type ConnectionOptions } from '../src/sdk/index.js';
import { interleave, linkRatios, row, type Scenario } from './context.js';
import { startDaemon } from './daemon.js';
import { now } from './stats.js';
import type { Row } from './types.js';

async function firstCommand(conn: ConnectionOptions, template: string): Promise<number> {
  const t0 = now();
  const s = await Sandbox.create({ ...conn, template });
  try {
    const r = await s.commands.run('echo hi');
    const ms = now() - t0;
    if (r.stdout !== 'hi\n') throw new Error(`echo hi printed ${JSON.stringify(r.stdout)}`);
    return ms;
  } finally {
    await s.kill();
  }
}

/** Build `base` on a daemon of its own with `cache` as CAPSULE_TEMPLATE_CACHE; ms until ready. */
async function buildBaseOn(workDir: string, name: string, cache: string): Promise<number> {
  const dataDir = path.join(workDir, `data-${name}`);
  const d = await startDaemon(dataDir, { env: { CAPSULE_TEMPLATE_CACHE: cache } });
  try {
    const conn = { apiUrl: d.url, ...(d.apiKey ? { apiKey: d.apiKey } : {}) };
    const t0 = now();
    await Template.build('base', conn);
    return now() - t0;
  } finally {
    await d.stop();
  }
}

export const templates: Scenario = async (ctx) => {
  const errors: string[] = [];
  const notes: string[] = [];
  const n = ctx.quick ? 5 : 30;
  const workDir = path.dirname(ctx.daemon.dataDir);
  const src = path.join(workDir, 'bench-template-src');
  fs.mkdirSync(src, { recursive: true });
  for (let i = 0; i < 50; i++) fs.writeFileSync(path.join(src, `f${i}.txt`), `file ${i}\n`.repeat(200));
  const base = Template.from('busybox').copy(src, '/app').env({ MODE: 'bench' }).run('ls /app | wc -l > /app-count');
  await base.build('bench-base', ctx.conn); // untimed: the layers exist from here on
  const headers: Record<string, string> = ctx.conn.apiKey ? { authorization: `Bearer ${ctx.conn.apiKey}` } : {};
  let fresh = 0;
  const got = await interleave(
    n,
    [
      {
        name: 'template.rebuild-cached',
        run: async () => {
          const t0 = now();
          const b = await base.build('bench-base', ctx.conn);
          const ms = now() - t0;
          if (b.cacheHits !== 2) throw new Error(`expected 2 cache hits, got ${b.cacheHits}`);
          return ms;
        },
      },
      {
        name: 'GET /v1/templates/:name',
        run: async () => {
          const t0 = now();
          const r = await fetch(`${ctx.daemon.url}/v1/templates/bench-base`, { headers });
          await r.arrayBuffer();
          if (!r.ok) throw new Error(`GET template: ${r.status}`);
          return now() - t0;
        },
      },
      {
        name: 'template.build-new-step',
        run: async () => {
          const t0 = now();
          const b = await base.run(`echo ${Date.now()}-${fresh++} > /stamp`).build('bench-new', ctx.conn);
          const ms = now() - t0;
          if (b.cacheHits !== 2) throw new Error(`expected the 2 earlier steps cached, got ${b.cacheHits}`);
          return ms;
        },
      },
      { name: 'template.first-create', run: () => firstCommand(ctx.conn, 'bench-new') },
      { name: 'busybox create + echo', run: () => firstCommand(ctx.conn, 'busybox') },
      {
        name: 'crun run -d + exec echo',
        run: async () => {
          const t0 = now();
          const id = await ctx.crun.start(0);
          try {
            await ctx.crun.exec(id, ['echo', 'hi'], { capture: true });
            return now() - t0;
          } finally {
            await ctx.crun.delete(id);
          }
        },
      },
    ],
    errors,
  );
  const rows: Row[] = [
    row('template.rebuild-cached', 'capsule', 'ms', got.get('template.rebuild-cached')!, { vs: 'GET /v1/templates/:name' }),
    row('template.build-new-step', 'capsule', 'ms', got.get('template.build-new-step')!, { vs: 'crun run -d + exec echo' }),
    row('template.first-create', 'capsule', 'ms', got.get('template.first-create')!, { vs: 'busybox create + echo' }),
    row('busybox create + echo', 'capsule', 'ms', got.get('busybox create + echo')!, { vs: 'crun run -d + exec echo' }),
    row('GET /v1/templates/:name', 'floor', 'ms', got.get('GET /v1/templates/:name')!),
    row('crun run -d + exec echo', 'baseline', 'ms', got.get('crun run -d + exec echo')!),
  ];
  notes.push('first-create alternates with build-new-step, so each sample starts a sandbox on a layer no sandbox has used yet.');

  const cache = process.env.CAPSULE_TEMPLATE_CACHE ?? '/var/cache/capsule-test';
  try {
    ctx.say('templates: base from the machine cache');
    const restore = await buildBaseOn(workDir, 'base-restore', cache);
    rows.push(row('template.base.cache-restore', 'capsule', 'ms', [restore]));
    if (ctx.quick) notes.push('--quick: the cold base build (debootstrap, about a minute) is skipped.');
    else {
      ctx.say('templates: base cold (debootstrap, no cache)');
      const cold = await buildBaseOn(workDir, 'base-cold', '');
      rows.push(row('template.base.cold', 'capsule', 'ms', [cold]));
      notes.push('base.cold runs debootstrap against the host\'s Debian mirror: most of it is the mirror and dpkg, so it moves with the network.');
    }
  } catch (e) {
    errors.push(`base build: ${(e as Error).message}`);
  }
  linkRatios(rows);
  return { name: 'templates', title: 'Templates: cached rebuild, a new step, first create, the base template', rows, notes, errors };
};
