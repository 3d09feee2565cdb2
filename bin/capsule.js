#!/usr/bin/env node
// Thin launcher: the CLI is compiled TypeScript in dist/.
import('../dist/src/cli/main.js').catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND') {
    process.stderr.write('capsule is not built yet: run `npm install && npm run build` in the repository root\n');
    process.exit(1);
  }
  throw err;
});
