// The SDK is compiled with the rest of the repository; this shim gives it its package name.
export * from '../../dist/src/sdk/index.js';
