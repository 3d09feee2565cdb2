/**
 * The verbs a backend without pause, stop/start, change export and volumes answers (gVisor, microVM):
 * each a clear `unsupported` naming the capability and pointing to the container backend, so a caller
 * that skipped the capability check still gets the same error from every such backend.
 */
import { UnsupportedError } from '../errors/index.js';
import type { CapabilityName, ContainerInfo } from './types.js';

export abstract class WithoutLifecycleVerbs {
  abstract readonly kind: string;
  /** How the error names the backend ("the gVisor backend"). */
  protected abstract readonly backendLabel: string;

  pause(id: string): Promise<void> {
    return this.unsupported(id, 'pause', 'pause a sandbox');
  }

  resume(id: string): Promise<void> {
    return this.unsupported(id, 'pause', 'resume a sandbox');
  }

  exportChanges(id: string, _dest: string, _signal?: AbortSignal): Promise<void> {
    return this.unsupported(id, 'exportChanges', "export a sandbox's file changes");
  }

  stop(id: string): Promise<void> {
    return this.unsupported(id, 'stop', 'stop a sandbox');
  }

  start(id: string, _signal?: AbortSignal): Promise<ContainerInfo> {
    return this.unsupported(id, 'stop', 'start a sandbox');
  }

  prepareVolume(volumeId: string, _sizeMb: number): Promise<void> {
    return this.unsupported(volumeId, 'volumes', 'make a volume');
  }

  removeVolume(volumeId: string): Promise<void> {
    return this.unsupported(volumeId, 'volumes', 'remove a volume');
  }

  protected unsupported(id: string, capability: CapabilityName, what: string): Promise<never> {
    return Promise.reject(
      new UnsupportedError(`cannot ${what}: ${this.backendLabel} does not support ${capability}; use isolation "container" for that`, {
        id,
        backend: this.kind,
        capability,
      }),
    );
  }
}
