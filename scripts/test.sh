#!/usr/bin/env bash
# The whole test suite: setup (packages, build, host preflight), unit tests, then
# integration tests and the escape/abuse battery against real daemons, real crun
# sandboxes and real SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Templates built by one test run are reused by the next (debian takes ~75 s to build).
export CAPSULE_TEMPLATE_CACHE="${CAPSULE_TEMPLATE_CACHE:-/var/cache/capsule-test}"
mkdir -p "$CAPSULE_TEMPLATE_CACHE"
# Debootstrapped templates are built before any test, so no test's time limit covers a first build (python: minutes).
node scripts/prebuild-templates.mjs debian,base,python
node --test --test-reporter=spec --test-concurrency=1 dist/test/unit dist/test/integration dist/test/security
