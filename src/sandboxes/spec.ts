/**
 * Turns what the sandbox service knows (a template's layers, the resolved
 * limits) into the runtime's ContainerSpec, and checks it against what the
 * driver says it can do, so an impossible request fails here with a clear
 * error instead of deep inside a backend.
 */
import type { ResourceLimits } from '../config/index.js';
import { UnsupportedError } from '../errors/index.js';
import type { CapabilityName, ContainerSpec, LayerRef, NetworkSpec, RuntimeDriver } from '../runtime/types.js';

export function containerSpec(
  runtime: RuntimeDriver,
  id: string,
  layers: readonly LayerRef[],
  resources: ResourceLimits,
  network: NetworkSpec = { mode: 'none' },
  opts: { allowSetuid?: boolean | undefined } = {},
): ContainerSpec {
  const caps = runtime.capabilities;
  if (layers.length === 0) throw new UnsupportedError(`sandbox ${id} has no root filesystem layers`, { id });
  if (layers.length > caps.maxLayers) {
    throw new UnsupportedError(`the ${runtime.kind} backend stacks at most ${caps.maxLayers} layers; this sandbox needs ${layers.length}`, {
      backend: runtime.kind,
      maxLayers: caps.maxLayers,
    });
  }
  if (!caps.network.includes(network.mode)) {
    throw new UnsupportedError(`the ${runtime.kind} backend cannot give a sandbox network mode "${network.mode}"`, { backend: runtime.kind });
  }
  return {
    id,
    layers,
    writable: { diskMb: resources.diskMb },
    resources: { cpus: resources.cpus, memoryMb: resources.memoryMb, pids: resources.pids },
    network,
    ...(opts.allowSetuid ? { allowSetuid: true } : {}),
  };
}

/** Throws a clear error unless the backend has the capability `what` needs. */
export function requireCapability(runtime: RuntimeDriver, cap: CapabilityName, what: string): void {
  if (!runtime.capabilities[cap]) {
    const reason = runtime.capabilities.reasons?.[cap];
    // Name the isolation too: a caller asked for "gvisor", not for "runsc".
    const isolation = runtime.capabilities.isolation;
    const hint = isolation === 'container' ? '' : ` (isolation "${isolation}"; use isolation "container" for that)`;
    throw new UnsupportedError(`cannot ${what}: the ${runtime.kind} backend does not support ${cap}${reason ? ` (${reason})` : ''}${hint}`, {
      backend: runtime.kind,
      isolation,
      capability: cap,
      ...(reason ? { reason } : {}),
    });
  }
}
