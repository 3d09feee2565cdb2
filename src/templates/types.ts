/**
 * Templates are root filesystems that sandboxes start from. A template's rootfs
 * is built once into the data directory, shifted to the mapped id range, and
 * then only ever read (it is the overlay's lower layer).
 */
export type TemplateStatus = 'missing' | 'building' | 'ready' | 'failed';

export interface TemplateInfo {
  name: string;
  description: string;
  status: TemplateStatus;
  sizeBytes?: number;
  builtAt?: number;
  error?: string;
}

/** Progress of a build: a phase name, and a fraction when it is known. */
export interface BuildProgress {
  phase: string;
  /** 0..1 when known. */
  fraction?: number;
  message?: string;
}

/** What a built-in template's sandboxes get besides its files (user templates have the same, from their steps). */
export interface BuiltinConfig {
  env?: Record<string, string>;
  workdir?: string;
  user?: string;
  /** setuid programs (sudo) work: see ContainerSpec.allowSetuid. */
  sudo?: boolean;
}

export interface TemplateDefinition {
  name: string;
  description: string;
  config?: BuiltinConfig;
  /** Fill `rootfsDir` (empty, exists) with a root filesystem owned by host root. */
  build(rootfsDir: string, onProgress: (p: BuildProgress) => void, signal?: AbortSignal): Promise<void>;
  /** Templates built once per machine into a cache: whether a build would now restore it from there. */
  cached?(): Promise<boolean>;
}
