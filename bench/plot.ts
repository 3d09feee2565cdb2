/**
 * A dependency-free SVG: one panel per scenario with the empirical CDF of
 * every row that has more than one sample (log-scaled x axis).
 */
import type { Row, ScenarioResult } from './types.js';

const COLORS = ['#d62728', '#1f77b4', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
const PW = 520;
const PH = 260;
const M = { l: 56, r: 16, t: 30, b: 40 };

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function niceTicks(lo: number, hi: number): number[] {
  const ticks: number[] = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v >= lo && v <= hi) ticks.push(v);
    }
  }
  return ticks;
}

function panel(title: string, unit: string, rows: Row[], x0: number, y0: number): string {
  const parts: string[] = [];
  const all = rows.flatMap((r) => r.samples).filter((v) => v > 0 && Number.isFinite(v));
  if (all.length === 0) return '';
  let lo = Math.min(...all);
  let hi = Math.max(...all);
  if (hi / lo < 10) {
    const mid = Math.sqrt(lo * hi);
    lo = mid / Math.sqrt(10);
    hi = mid * Math.sqrt(10);
  }
  lo /= 1.1;
  hi *= 1.1;
  const w = PW - M.l - M.r;
  const h = PH - M.t - M.b;
  const X = (v: number) => x0 + M.l + ((Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * w;
  const Y = (p: number) => y0 + M.t + (1 - p) * h;
  parts.push(`<text x="${x0 + PW / 2}" y="${y0 + 18}" text-anchor="middle" font-weight="bold">${escapeXml(title)}</text>`);
  parts.push(`<rect x="${x0 + M.l}" y="${y0 + M.t}" width="${w}" height="${h}" fill="none" stroke="#999"/>`);
  for (const t of niceTicks(lo, hi)) {
    parts.push(`<line x1="${X(t)}" x2="${X(t)}" y1="${y0 + M.t}" y2="${y0 + M.t + h}" stroke="#eee"/>`);
    parts.push(`<text x="${X(t)}" y="${y0 + M.t + h + 14}" text-anchor="middle" font-size="10">${t}</text>`);
  }
  for (const p of [0, 0.5, 0.95, 1]) {
    parts.push(`<line x1="${x0 + M.l}" x2="${x0 + M.l + w}" y1="${Y(p)}" y2="${Y(p)}" stroke="#eee"/>`);
    parts.push(`<text x="${x0 + M.l - 4}" y="${Y(p) + 3}" text-anchor="end" font-size="10">${p}</text>`);
  }
  parts.push(`<text x="${x0 + M.l + w / 2}" y="${y0 + PH - 6}" text-anchor="middle" font-size="11">${escapeXml(unit)} (log)</text>`);
  rows.forEach((r, i) => {
    const s = r.samples.filter((v) => v > 0 && Number.isFinite(v)).sort((a, b) => a - b);
    if (s.length < 2) return;
    const color = COLORS[i % COLORS.length]!;
    let d = `M${X(s[0]!).toFixed(1)},${Y(0).toFixed(1)}`;
    s.forEach((v, k) => {
      d += ` L${X(v).toFixed(1)},${Y(k / s.length).toFixed(1)} L${X(v).toFixed(1)},${Y((k + 1) / s.length).toFixed(1)}`;
    });
    const dash = r.kind === 'capsule' ? '' : r.kind === 'floor' ? ' stroke-dasharray="2,3"' : ' stroke-dasharray="6,3"';
    parts.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="${r.kind === 'capsule' ? 2 : 1.5}"${dash}/>`);
    const ly = y0 + M.t + 12 + i * 13;
    parts.push(`<line x1="${x0 + M.l + 8}" x2="${x0 + M.l + 26}" y1="${ly - 4}" y2="${ly - 4}" stroke="${color}" stroke-width="2"${dash}/>`);
    parts.push(`<text x="${x0 + M.l + 30}" y="${ly}" font-size="10">${escapeXml(r.name)} (p50 ${r.summary.p50.toFixed(2)})</text>`);
  });
  return parts.join('\n');
}

export function renderSvg(scenarios: ScenarioResult[], title: string): string {
  const panels: Array<{ title: string; unit: string; rows: Row[] }> = [];
  for (const s of scenarios) {
    const byUnit = new Map<string, Row[]>();
    for (const r of s.rows) {
      if (r.samples.length < 2) continue;
      byUnit.set(r.unit, [...(byUnit.get(r.unit) ?? []), r]);
    }
    for (const [unit, rows] of byUnit) panels.push({ title: `${s.name}: ${unit === 'ms' ? 'latency CDF' : `${unit} CDF`}`, unit, rows });
  }
  const cols = 2;
  const rowsN = Math.ceil(panels.length / cols);
  const W = cols * PW;
  const H = rowsN * PH + 30;
  const body = panels.map((p, i) => panel(p.title, p.unit, p.rows, (i % cols) * PW, 30 + Math.floor(i / cols) * PH)).join('\n');
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">${escapeXml(title)}</text>`,
    body,
    '</svg>',
    '',
  ].join('\n');
}
