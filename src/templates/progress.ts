/**
 * Build progress for humans (used by the CLI). On a terminal: one cli-progress
 * bar that updates in place. Anywhere else (CI logs, pipes, files): a single
 * line each time the phase changes, so logs stay short and readable.
 */
import cliProgress from 'cli-progress';
import type { BuildProgress } from './types.js';

export interface ProgressReporterOptions {
  /** Shown in front of every line / the bar, e.g. the template name. */
  label?: string;
  /** Force one mode instead of looking at stream.isTTY. */
  tty?: boolean;
}

export type ProgressReporter = ((p: BuildProgress) => void) & {
  /** Finish the bar (or do nothing in line mode). Safe to call more than once. */
  stop(): void;
};

function percent(fraction: number | undefined): string {
  return fraction === undefined ? '' : ` ${Math.round(fraction * 100)}%`;
}

export function createProgressReporter(stream: NodeJS.WriteStream, opts: ProgressReporterOptions = {}): ProgressReporter {
  const label = opts.label ? `${opts.label} ` : '';
  const tty = opts.tty ?? Boolean(stream.isTTY);

  if (!tty) {
    let lastPhase: string | undefined;
    const report = ((p: BuildProgress) => {
      if (p.phase === lastPhase) return;
      lastPhase = p.phase;
      stream.write(`${label}${p.phase}${percent(p.fraction)}${p.message ? ` (${p.message})` : ''}\n`);
    }) as ProgressReporter;
    report.stop = () => {};
    return report;
  }

  const bar = new cliProgress.SingleBar(
    {
      stream,
      format: `${label}[{bar}] {percentage}% | {phase} {message}`,
      hideCursor: true,
      barsize: 30,
      clearOnComplete: false,
      stopOnComplete: false,
      fps: 10,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  let stopped = false;
  let value = 0;
  const report = ((p: BuildProgress) => {
    if (stopped) return;
    if (p.fraction !== undefined) value = Math.max(value, Math.round(p.fraction * 1000));
    const message = (p.message ?? '').slice(0, 40);
    if (!started) {
      started = true;
      bar.start(1000, value, { phase: p.phase, message });
    } else {
      bar.update(value, { phase: p.phase, message });
    }
  }) as ProgressReporter;
  report.stop = () => {
    if (stopped) return;
    stopped = true;
    if (started) bar.stop();
  };
  return report;
}
