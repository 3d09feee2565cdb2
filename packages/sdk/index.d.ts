export * from '../../dist/src/sdk/index.js';
