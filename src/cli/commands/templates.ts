/** `capsule template list|build|inspect|rm|import`. */
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Command } from 'commander';
import { Template, type BuildInfo, type BuildTemplateOptions, type TemplateDefinition } from '../../sdk/index.js';
import { createProgressReporter } from '../../templates/progress.js';
import { connection, humanSize, printJson, printTable, shortTime, UsageError } from '../util.js';

/** A file that defines a template, rather than the name of a built-in one. */
const DEFINITION_FILE = /\.(json|ts|mts|js|mjs)$/;

/** Something a template file may export: a Template (the SDK builder) or a definition object. */
interface DefinitionSource {
  definition: () => Promise<TemplateDefinition>;
  build: (name: string, opts: BuildTemplateOptions) => Promise<BuildInfo>;
}

function isTemplate(x: unknown): x is DefinitionSource {
  return typeof x === 'object' && x !== null && typeof (x as DefinitionSource).definition === 'function' && typeof (x as DefinitionSource).build === 'function';
}

/**
 * Load a template file: JSON holds a definition (copy steps may name local
 * paths, relative to the file); a .ts/.js module's default export is a
 * Template or a definition.
 */
async function loadTemplateFile(file: string): Promise<DefinitionSource> {
  const abs = path.resolve(file);
  if (!fs.existsSync(abs)) throw new UsageError(`no such file: ${file}`);
  let value: unknown;
  if (abs.endsWith('.json')) {
    try {
      value = JSON.parse(fs.readFileSync(abs, 'utf8'));
    } catch (e) {
      throw new UsageError(`${file} is not valid JSON: ${e instanceof Error ? e.message : String(e)}`);
    }
  } else {
    // TypeScript and ES modules alike, through tsx (it handles plain JS too).
    const { tsImport } = await import('tsx/esm/api');
    const mod = (await tsImport(pathToFileURL(abs).href, import.meta.url)) as { default?: unknown };
    value = mod.default;
    // A CommonJS-shaped module puts the default export one level down.
    if (!isTemplate(value) && typeof value === 'object' && value !== null && 'default' in value) value = (value as { default: unknown }).default;
  }
  if (isTemplate(value)) return value;
  if (typeof value === 'object' && value !== null && 'from' in value) {
    return Template.fromDefinition(value as TemplateDefinition, { baseDir: path.dirname(abs) });
  }
  throw new UsageError(`${file} must hold a template definition ({"from": ..., "steps": [...]}) or export one (export default Template.from(...)...)`);
}

/** Step progress (step k of n, elapsed) and uploads (bytes) on stderr, and the steps' output unless quiet. */
function userBuildReporting(quiet: boolean, label: string): Pick<BuildTemplateOptions, 'onProgress' | 'onLog' | 'onUpload'> & { stop: () => void } {
  const bar = createProgressReporter(process.stderr, { label, tty: quiet ? undefined : false });
  const t0 = Date.now();
  const elapsed = () => `${((Date.now() - t0) / 1000).toFixed(1)} s`;
  return {
    onProgress: (p) => bar({ phase: p.phase, message: elapsed(), ...(p.steps > 0 ? { fraction: p.step / p.steps } : {}) }),
    onUpload: (u) => bar({ phase: u.cached ? `archive ${u.digest.slice(7, 19)} already uploaded` : `uploading ${humanSize(u.bytes)} (${u.digest.slice(7, 19)})`, message: elapsed() }),
    ...(quiet ? {} : { onLog: (text: string) => void process.stderr.write(text) }),
    stop: () => bar.stop(),
  };
}

function printBuild(b: BuildInfo, json: boolean | undefined): void {
  if (json) return printJson(b);
  const secs = b.endedAt ? ` in ${((Date.parse(b.endedAt) - Date.parse(b.startedAt)) / 1000).toFixed(1)} s` : '';
  process.stdout.write(`${b.template} built (${b.id}${secs}; ${b.cacheHits ?? 0} of ${b.steps} steps cached)\n`);
}

export function registerTemplateCommands(program: Command): void {
  const template = program.command('template').alias('templates').description('list, build, import, inspect and remove sandbox templates');

  template
    .command('list')
    .alias('ls')
    .description('list templates (built-in and yours) and whether they are built')
    .option('--json', 'print a JSON array')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const list = await Template.list(connection(cmd));
      if (opts.json) return printJson(list);
      printTable(
        ['name', 'status', 'size', 'built', 'description'],
        list.map((t) => [t.name, t.status, humanSize(t.sizeBytes), shortTime(t.builtAt), t.error ? `${t.description} (error: ${t.error})` : t.description]),
      );
    });

  template
    .command('build')
    .description('build a template from a file (JSON definition, or a .ts/.js module exporting a Template), or a built-in one by name; progress and output on stderr')
    .argument('<file-or-name>', 'template.json / template.ts, or a built-in template name (busybox, debian, base)')
    .option('-n, --name <name>', 'name of the template a file builds (default: the file name without extension)')
    .option('-f, --force', 'built-in templates: rebuild even if already built')
    .option('-q, --quiet', "don't print the steps' output")
    .option('--json', 'print the result as JSON')
    .action(async (target: string, opts: { name?: string; force?: boolean; quiet?: boolean; json?: boolean }, cmd: Command) => {
      const conn = connection(cmd);
      if (DEFINITION_FILE.test(target) || fs.existsSync(target)) {
        const source = await loadTemplateFile(target);
        const name = opts.name ?? path.basename(target).replace(DEFINITION_FILE, '');
        const rep = userBuildReporting(opts.quiet === true, name);
        let b: BuildInfo;
        try {
          b = await source.build(name, { ...conn, onProgress: rep.onProgress, onUpload: rep.onUpload, ...(rep.onLog ? { onLog: rep.onLog } : {}) });
        } finally {
          rep.stop();
        }
        return printBuild(b, opts.json);
      }
      if (opts.name) throw new UsageError('--name is for building a template file; a built-in template keeps its name');
      const progress = createProgressReporter(process.stderr, { label: target });
      let info;
      try {
        info = await Template.build(target, { ...conn, force: opts.force === true, onProgress: progress });
      } finally {
        progress.stop();
      }
      if (opts.json) printJson(info);
      else process.stdout.write(`${info.name} ${info.status}${info.sizeBytes !== undefined ? ` (${humanSize(info.sizeBytes)})` : ''}\n`);
    });

  template
    .command('import')
    .description('make a template from an OCI image: a docker save / podman save tarball, or an OCI image layout (directory or tar)')
    .argument('<path>', 'the image archive (.tar) or OCI layout directory')
    .option('-n, --name <name>', 'name of the new template (default: the file name without extension)')
    .option('--json', 'print the build as JSON')
    .action(async (archive: string, opts: { name?: string; json?: boolean }, cmd: Command) => {
      if (!fs.existsSync(archive)) throw new UsageError(`no such file or directory: ${archive}`);
      const name = opts.name ?? path.basename(path.resolve(archive)).replace(/\.(tar|oci)$/, '');
      const rep = userBuildReporting(true, name);
      let b: BuildInfo;
      try {
        b = await Template.importImage(name, archive, { ...connection(cmd), onProgress: rep.onProgress, onUpload: rep.onUpload });
      } finally {
        rep.stop();
      }
      printBuild(b, opts.json);
    });

  template
    .command('inspect')
    .description('show a template: layers, config and definition')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, opts: { json?: boolean }, cmd: Command) => {
      const t = await Template.get(name, connection(cmd));
      if (opts.json) return printJson(t);
      const lines = [
        `name:     ${t.name}${t.builtIn ? ' (built-in)' : ''}`,
        `status:   ${t.status}${t.error ? ` (${t.error})` : ''}`,
        `size:     ${humanSize(t.sizeBytes)}`,
        `built:    ${shortTime(t.builtAt)}`,
        ...(t.definition ? [`from:     ${t.definition.from}`] : []),
        ...(t.config?.workdir ? [`workdir:  ${t.config.workdir}`] : []),
        ...(t.config?.user ? [`user:     ${t.config.user}`] : []),
        ...Object.entries(t.config?.env ?? {}).map(([k, v], i) => `${i === 0 ? 'env:      ' : '          '}${k}=${v}`),
        ...(t.config?.cmd ? [`cmd:      ${t.config.cmd}`] : []),
        'layers:',
      ];
      process.stdout.write(`${lines.join('\n')}\n`);
      printTable(
        ['digest', 'kind', 'size', 'description'],
        t.layers.map((l) => [l.digest.slice(0, 19), l.kind, humanSize(l.sizeBytes), l.description]),
      );
    });

  template
    .command('rm')
    .alias('remove')
    .description('remove one of your templates (refused while sandboxes use it)')
    .argument('<name...>')
    .action(async (names: string[], _opts: unknown, cmd: Command) => {
      for (const n of names) await Template.remove(n, connection(cmd));
    });
}
