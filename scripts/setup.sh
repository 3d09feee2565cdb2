#!/usr/bin/env bash
# Installs what Capsule needs on a fresh Debian machine, then builds it.
# Safe to run again: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the OCI runtimes, busybox for the tiny template, debootstrap
# for the debian template, the default seccomp profile, and a static C
# toolchain for the in-sandbox agent; e2fsprogs for per-sandbox disks and
# libseccomp-dev to precompile the seccomp filter once instead of per sandbox;
# tmux to test `capsule shell` as a person uses it (test/integration/cli/shell.test.ts).
need=()
command -v crun >/dev/null || need+=(crun)
command -v runc >/dev/null || need+=(runc)
command -v runsc >/dev/null || need+=(runsc) # gVisor: isolation "gvisor" (optional for the daemon, tested by the suite)
# QEMU: isolation "microvm" (optional for the daemon, tested by the suite under emulation). Its guest kernel,
# Debian's cloud kernel, is unpacked into /var/cache/capsule/microvm/kernel by `capsule doctor --fix` below.
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v bwrap >/dev/null || need+=(bubblewrap)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -f /usr/share/containers/seccomp.json ] || need+=(golang-github-containers-common)
command -v ip >/dev/null || need+=(iproute2)
# Sandboxes with egress: nft loads each sandbox's redirect table (native/capsule-netrelay.c).
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need+=(nftables)
# The networking tests make a self-signed certificate for their HTTPS "internet".
command -v openssl >/dev/null || need+=(openssl)
command -v musl-gcc >/dev/null || need+=(musl-tools)
command -v mount >/dev/null || need+=(mount)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
[ -f /usr/include/seccomp.h ] || need+=(libseccomp-dev)
command -v gcc >/dev/null || need+=(gcc)
command -v tmux >/dev/null || need+=(tmux)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "capsule setup: missing Debian packages: ${need[*]}; run as root or: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "capsule setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# npm packages (better-sqlite3 compiles its native addon here when no prebuilt fits).
if [ ! -d node_modules/better-sqlite3/build ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm install --no-audit --no-fund --loglevel=error
fi

npm run --silent build

# `capsule` on PATH (the README's commands and MCP client configurations call it by name).
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/link-cli.sh /usr/local/bin || true
elif ! command -v capsule >/dev/null; then
  echo "capsule setup: capsule is not on PATH; as root this links /usr/local/bin/capsule, or add $(pwd -P)/bin to PATH" >&2
fi

# CRIU 4 for memory snapshots (hibernate): built once from Debian trixie's source package and cached in
# /var/cache/capsule/criu like the template cache (about a minute the first time, then a copy). Optional:
# without it everything else works and hibernate says why not.
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/build-criu.sh || echo "capsule setup: CRIU 4 could not be built; memory snapshots are unavailable (capsule doctor says why)" >&2
fi

# Host preflight: fixes what it safely can (e.g. the cgroup v2 hugetlb conflict with crun), and fetches
# the microVMs' guest kernel when it is missing.
if [ "$(id -u)" -eq 0 ]; then
  node bin/capsule.js doctor --fix >&2 || { echo "capsule setup: host preflight failed (see above)" >&2; exit 1; }
fi
