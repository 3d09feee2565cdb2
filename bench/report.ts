/**
 * Results: the console table, the Markdown summary and the JSON file.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fmt } from './stats.js';
import type { BenchOptions, Row, ScenarioResult } from './types.js';

export interface BenchReport {
  startedAt: string;
  finishedAt: string;
  wallSeconds: number;
  options: Omit<BenchOptions, 'outDir'>;
  host: Record<string, string | number>;
  scenarios: ScenarioResult[];
  /** Problems that make the run count as broken (exit 1). */
  failures: string[];
  cleanupProblems: string[];
}

export function hostInfo(crunVersion: string): Record<string, string | number> {
  return {
    hostname: os.hostname(),
    kernel: os.release(),
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memTotalGiB: Number((os.totalmem() / 2 ** 30).toFixed(1)),
    node: process.version,
    crun: crunVersion,
  };
}

function targetCell(r: Row): string {
  if (!r.target) return '';
  const t = r.target;
  const v = t.on === 'throughput' ? r.throughput : t.on === 'ratio' ? r.ratio : t.on === 'p99' ? r.summary.p99 : r.summary.p50;
  if (v === undefined || !Number.isFinite(v)) return t.label;
  if (r.unit === 'MiB' && v < 0) return `${t.label} (n/a: negative, host noise)`;
  const ok = t.better === 'lower' ? v <= t.value : v >= t.value;
  return `${t.label} ${ok ? '✅' : '❌'}`;
}

export const COLUMNS = ['scenario', 'row', 'n', 'p50', 'p95', 'p99', 'unit', 'ops/s', 'ratio', 'vs', 'target'] as const;

export function tableRows(scenarios: ScenarioResult[]): string[][] {
  const out: string[][] = [];
  for (const s of scenarios) {
    for (const r of s.rows) {
      out.push([
        s.name,
        r.kind === 'capsule' ? `**${r.name}**` : r.name,
        String(r.summary.n),
        fmt(r.summary.p50),
        fmt(r.summary.p95),
        fmt(r.summary.p99),
        r.unit,
        r.throughput !== undefined ? fmt(r.throughput, 1) : '',
        r.ratio !== undefined ? `${fmt(r.ratio)}×` : '',
        r.vs ?? '',
        targetCell(r),
      ]);
    }
  }
  return out;
}

/** Plain fixed-width table for the terminal. */
export function consoleTable(scenarios: ScenarioResult[]): string {
  const rows = tableRows(scenarios).map((r) => r.map((c) => c.replace(/\*\*/g, '')));
  const all = [[...COLUMNS], ...rows];
  const widths = COLUMNS.map((_, i) => Math.max(...all.map((r) => [...(r[i] ?? '')].length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(all[0]!), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export function markdown(rep: BenchReport, svgName: string | null): string {
  const esc = (c: string) => c.replace(/\|/g, '\\|');
  const lines: string[] = [];
  lines.push(`# Capsule benchmark — ${rep.startedAt}${rep.options.quick ? ' (quick)' : ''}`, '');
  lines.push(
    `Host: ${rep.host.cpus} × ${rep.host.cpuModel}, ${rep.host.memTotalGiB} GiB, kernel ${rep.host.kernel}, ${rep.host.crun}, Node ${rep.host.node}. Wall time ${rep.wallSeconds.toFixed(0)} s.`,
    '',
    'Latencies in ms (lower is better), file rates in MB/s (higher is better). **Bold** rows are Capsule; the others are baselines measured in the same run, interleaved with Capsule\'s iterations. ratio = p50 / p50 of the row in "vs" (for ops/s rows: throughput / throughput).',
    '',
  );
  lines.push(`| ${COLUMNS.join(' | ')} |`, `|${COLUMNS.map(() => '---').join('|')}|`);
  for (const r of tableRows(rep.scenarios)) lines.push(`| ${r.map(esc).join(' | ')} |`);
  lines.push('');
  for (const s of rep.scenarios) {
    lines.push(`## ${s.name}: ${s.title}`, '');
    for (const n of s.notes) lines.push(`- ${n}`);
    for (const r of s.rows) {
      if (r.extra) lines.push(`- ${r.name}: ${Object.entries(r.extra).map(([k, v]) => `${k}=${v}`).join(', ')}`);
    }
    if (s.errors.length) {
      lines.push('', `Errors (${s.errors.length}):`);
      for (const e of s.errors.slice(0, 10)) lines.push(`- \`${e.replace(/`/g, "'").slice(0, 300)}\``);
    }
    lines.push(`- scenario wall time ${(s.wallMs / 1000).toFixed(1)} s`, '');
  }
  if (rep.failures.length) {
    lines.push('## Failures', '');
    for (const f of rep.failures) lines.push(`- ${f}`);
    lines.push('');
  }
  if (rep.cleanupProblems.length) {
    lines.push('## Cleanup problems', '');
    for (const f of rep.cleanupProblems) lines.push(`- ${f}`);
    lines.push('');
  }
  if (svgName) lines.push(`![latency CDFs](${svgName})`, '');
  return lines.join('\n');
}

/** Writes <stamp>.json, <stamp>.md, <stamp>.svg and latest.{md,svg}; returns the paths. */
export function writeResults(dir: string, rep: BenchReport, svg: string): { json: string; md: string; svg: string; latest: string } {
  fs.mkdirSync(dir, { recursive: true });
  const stamp = rep.startedAt.replace(/[:.]/g, '-');
  const json = path.join(dir, `${stamp}.json`);
  const md = path.join(dir, `${stamp}.md`);
  const svgPath = path.join(dir, `${stamp}.svg`);
  const latest = path.join(dir, 'latest.md');
  fs.writeFileSync(json, JSON.stringify(rep, null, 1));
  fs.writeFileSync(svgPath, svg);
  fs.writeFileSync(path.join(dir, 'latest.svg'), svg);
  fs.writeFileSync(md, markdown(rep, path.basename(svgPath)));
  fs.writeFileSync(latest, markdown(rep, 'latest.svg'));
  return { json, md, svg: svgPath, latest };
}
