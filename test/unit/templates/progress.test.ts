import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createProgressReporter } from '../../../src/templates/progress.js';

function fakeStream(isTTY: boolean) {
  const chunks: string[] = [];
  const stream = { isTTY, columns: 100, write: (s: string) => (chunks.push(s), true) } as unknown as NodeJS.WriteStream;
  return { stream, chunks };
}

test('non-TTY: one line per phase change', () => {
  const { stream, chunks } = fakeStream(false);
  const report = createProgressReporter(stream, { label: 'debian' });
  report({ phase: 'downloading', fraction: 0.1, message: 'bash' });
  report({ phase: 'downloading', fraction: 0.2, message: 'coreutils' });
  report({ phase: 'unpacking', fraction: 0.5 });
  report({ phase: 'ready', fraction: 1 });
  report.stop();
  report.stop();
  assert.deepEqual(chunks, ['debian downloading 10% (bash)\n', 'debian unpacking 50%\n', 'debian ready 100%\n']);
});
