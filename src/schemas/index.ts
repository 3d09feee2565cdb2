export * from './common.js';
export * from './sandboxes.js';
export * from './commands.js';
export * from './files.js';
export * from './templates.js';
export * from './keys.js';
export * from './info.js';
export * from './case.js';
