/** Public surface of the runtime layer. */
export type { ContainerInfo, ContainerSpec, ContainerStatus, RuntimeDriver } from './types.js';
export { OciRuntimeDriver, SANDBOX_ID_RE, type OciRuntimeDriverOptions, type RuntimeLogger } from './driver.js';
export { runDoctor, ensureHostReady, formatDoctor, type DoctorCheck, type DoctorOptions } from './doctor.js';
export { buildOciSpec, SANDBOX_CAPABILITIES, type BundleInput, type OciSpec } from './bundle.js';
export { buildSandboxSeccomp, loadDefaultSeccomp, DEFAULT_SECCOMP_PROFILE, type OciSeccomp } from './seccomp.js';
