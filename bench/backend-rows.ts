/**
 * What the gVisor and microVM scenarios measure the same way, each beside a container sandbox in the
 * same run: an SDK file written and read back in both (interleaved), the idle host memory of a sandbox's
 * cgroup, and the small timing helpers of their exec rows.
 */
import fs from 'node:fs';
import type { Sandbox } from '../src/sdk/index.js';
import { interleave, row } from './context.js';
import type { Row } from './types.js';
import { now } from './stats.js';

export async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = now();
  await fn();
  return now() - t0;
}

export function checkTrue(r: { exitCode: number }): void {
  if (r.exitCode !== 0) throw new Error(`true exited ${r.exitCode}`);
}

/** Five samples, 100 ms apart, of the sandbox's v1 memory cgroup usage (MiB); none without that cgroup. */
export async function idleMemoryMiB(sandboxId: string): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < 5; i++) {
    try {
      out.push(Number(fs.readFileSync(`/sys/fs/cgroup/memory/capsule/${sandboxId}/memory.usage_in_bytes`, 'utf8').trim()) / 1048576);
    } catch {
      /* no v1 memory cgroup */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return out;
}

/**
 * `mb` MB (10^6 bytes) written and read back through the SDK in a sandbox of `kind` and in a container,
 * `rounds` times, interleaved. Rows: write and read MB/s of each; the kind's ratio is to the container.
 */
export async function transferRows(kind: string, sbx: Sandbox, container: Sandbox, mb: number, rounds: number, errors: string[]): Promise<Row[]> {
  const data = new Uint8Array(mb * 1_000_000).fill(7);
  const kinds = [[kind, sbx], ['container', container]] as const;
  const xfer = new Map<string, number[]>(kinds.flatMap(([k]) => [[`sdk write ${mb} MB (${k})`, []], [`sdk read ${mb} MB (${k})`, []]] as const));
  await interleave(
    rounds,
    kinds.map(([k, s]) => ({
      name: `files ${k}`,
      run: async (i: number) => {
        const p = `/tmp/bench-${i}.bin`;
        let t0 = now();
        await s.files.write(p, data);
        xfer.get(`sdk write ${mb} MB (${k})`)!.push((mb * 1000) / (now() - t0));
        t0 = now();
        const back = await s.files.read(p, { format: 'bytes' });
        xfer.get(`sdk read ${mb} MB (${k})`)!.push((mb * 1000) / (now() - t0));
        if (back.length !== data.length) throw new Error(`${k}: read ${back.length} bytes of ${data.length}`);
        await s.files.remove(p);
        return 0;
      },
    })),
    errors,
  );
  const rows: Row[] = [];
  for (const dir of ['write', 'read']) {
    const [v, c] = [`sdk ${dir} ${mb} MB (${kind})`, `sdk ${dir} ${mb} MB (container)`];
    if (xfer.get(v)!.length > 0) rows.push(row(v, 'capsule', 'MB/s', xfer.get(v)!, { vs: c }));
    if (xfer.get(c)!.length > 0) rows.push(row(c, 'capsule', 'MB/s', xfer.get(c)!));
  }
  return rows;
}
