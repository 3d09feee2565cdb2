/** The E2B-compatible wire formats (src/e2b): control plane, envd's HTTP and Connect services, the code interpreter. */
export * from './control.js';
export * as envd from './envd.js';
export * as processSvc from './process.js';
export * as filesystemSvc from './filesystem.js';
export * as interpreter from './interpreter.js';
