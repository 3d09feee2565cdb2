/**
 * Scenario `e2b` — time to first command through E2B's own `e2b` SDK against Capsule's E2B front
 * door (`Sandbox.create('busybox')` + `commands.run('echo hi')`), interleaved with the same through
 * Capsule's SDK, on the same daemon: the price of the translation (control plane JSON, envd's
 * Connect stream, the access token) next to the native path.
 */
import { Sandbox as E2bSandbox } from 'e2b';
import { Sandbox } from '../src/sdk/index.js';
import { interleave, linkRatios, row, type Scenario } from './context.js';
import { now } from './stats.js';

/** A key in E2B's format for the bench daemon (any `e2b_` key passes a daemon without keys). */
async function e2bKey(url: string, admin: string | undefined): Promise<string> {
  if (!admin) return `e2b_${'0'.repeat(40)}`;
  const r = await fetch(`${url}/v1/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'bench-e2b', format: 'e2b' }),
  });
  if (r.status !== 201) throw new Error(`could not make an E2B key: ${r.status} ${await r.text()}`);
  return ((await r.json()) as { key: string }).key;
}

export const e2b: Scenario = async (ctx) => {
  const errors: string[] = [];
  const n = ctx.quick ? 4 : 30;
  const url = ctx.daemon.url;
  const opts = { apiKey: await e2bKey(url, ctx.daemon.apiKey), apiUrl: `${url}/e2b`, sandboxUrl: url, allowInternetAccess: false };
  const check = (stdout: string, exitCode: number) => {
    if (stdout !== 'hi\n' || exitCode !== 0) throw new Error(`echo hi gave exit ${exitCode}, stdout ${JSON.stringify(stdout)}`);
  };
  const steps = [
    {
      name: 'e2b.ttfc (e2b SDK)',
      run: async () => {
        const t0 = now();
        const s = await E2bSandbox.create('busybox', opts);
        try {
          const r = await s.commands.run('echo hi');
          const ms = now() - t0;
          check(r.stdout, r.exitCode);
          return ms;
        } finally {
          await s.kill();
        }
      },
    },
    {
      name: 'e2b.ttfc (Capsule SDK)',
      run: async () => {
        const t0 = now();
        const s = await Sandbox.create({ ...ctx.conn, template: 'busybox' });
        try {
          const r = await s.commands.run('echo hi');
          const ms = now() - t0;
          check(r.stdout, r.exitCode);
          return ms;
        } finally {
          await s.kill();
        }
      },
    },
  ];
  const got = await interleave(n, steps, errors);
  const rows = [
    row('e2b.ttfc (e2b SDK)', 'capsule', 'ms', got.get('e2b.ttfc (e2b SDK)')!, { vs: 'e2b.ttfc (Capsule SDK)' }),
    row('e2b.ttfc (Capsule SDK)', 'capsule', 'ms', got.get('e2b.ttfc (Capsule SDK)')!),
  ];
  linkRatios(rows);
  return {
    name: 'e2b',
    title: 'E2B front door: create + `echo hi` through the `e2b` SDK vs Capsule’s SDK',
    rows,
    notes: ['Same daemon, busybox, no pool, interleaved. Teardown is not timed. The e2b SDK runs commands as `/bin/bash -l -c` (here /bin/sh -l: busybox has no bash).'],
    errors,
  };
};
