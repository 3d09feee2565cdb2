export type { BuildProgress, TemplateDefinition, TemplateInfo, TemplateStatus } from './types.js';
export { busyboxTemplate, createBusyboxTemplate } from './busybox.js';
export {
  createDebianTemplate,
  debianTemplate,
  debianTrixieTemplate,
  DEFAULT_DEBIAN_MIRROR,
  findMirror,
  TEMPLATE_CACHE_ENV,
  type DebianTemplateOptions,
} from './debian.js';
export { shiftOwnership, type ShiftOptions, type ShiftResult } from './idshift.js';
export {
  BUILTIN_TEMPLATES,
  TemplateService,
  type BuildOptions,
  type InUsePredicate,
  type TemplateLogger,
  type TemplateServiceOptions,
} from './service.js';
export { createProgressReporter, type ProgressReporter, type ProgressReporterOptions } from './progress.js';
