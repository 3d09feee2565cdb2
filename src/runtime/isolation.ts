/**
 * Isolation kinds a sandbox can ask for, one per kind of backend. The names
 * are the API's (`isolation` in create, GET /v1/info); which driver serves
 * each is decided in open-backends.ts: crun/runc, runsc (src/runtime/gvisor)
 * and QEMU microVMs (src/runtime/microvm).
 */
export const ISOLATIONS = ['container', 'gvisor', 'microvm'] as const;
export type Isolation = (typeof ISOLATIONS)[number];

/**
 * The isolation of a sandbox recorded with runtime `kind` (the `runtime`
 * column: a driver's `kind`). Rows store the driver kind rather than the
 * isolation so a restart can hand each sandbox back to the driver that made
 * it; this is the one place that maps one to the other. Unknown or missing
 * kinds are OCI runtimes on the host kernel (rows from before backends were
 * recorded held only crun sandboxes).
 */
export function isolationOfRuntime(kind: string | null | undefined): Isolation {
  if (kind === 'runsc') return 'gvisor';
  if (kind === 'microvm') return 'microvm';
  return 'container';
}
