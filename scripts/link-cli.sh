#!/usr/bin/env bash
# Puts `capsule` on PATH: a symlink <bin-dir>/capsule -> <repo>/bin/capsule.js, so that
# `capsule ...` and MCP client configurations with "command": "capsule" work after setup.
#
#   bash scripts/link-cli.sh [bin-dir]     (default /usr/local/bin; setup.sh runs it as root)
#
# Never replaces something that works: a link to this checkout is kept, a link to another
# checkout that still exists is kept (and named), and so is a regular file. Only a missing
# entry or a dangling link (its checkout was removed) is (re)made. Exit 1 only when the
# directory cannot be written.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd -P)"
bin_dir="${1:-/usr/local/bin}"
target="$repo/bin/capsule.js"
link="$bin_dir/capsule"

if [ -L "$link" ]; then
  current="$(readlink "$link")"
  if [ "$current" = "$target" ]; then
    echo "capsule setup: $link already points to this checkout" >&2
    exit 0
  fi
  if [ -e "$link" ]; then
    echo "capsule setup: keeping $link -> $current (another checkout); to use this one: ln -sfn $target $link" >&2
    exit 0
  fi
  echo "capsule setup: $link pointed to $current, which is gone; relinking" >&2
elif [ -e "$link" ]; then
  echo "capsule setup: keeping $link (not a link made by setup); this checkout's CLI is $target" >&2
  exit 0
fi

if ! mkdir -p "$bin_dir" 2>/dev/null || ! ln -sfn "$target" "$link" 2>/dev/null; then
  echo "capsule setup: cannot write $link; run as root, or add $repo/bin to PATH (or use \"command\": \"$target\")" >&2
  exit 1
fi
echo "capsule setup: linked $link -> $target (capsule is on PATH)" >&2
case ":$PATH:" in
  *":$bin_dir:"*) ;;
  *) echo "capsule setup: note: $bin_dir is not on this shell's PATH" >&2 ;;
esac
