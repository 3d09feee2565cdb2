#!/usr/bin/env bash
# Builds CRIU 4 (4.1.1 today; memory snapshots: hibernate, fork with memory) from Debian
# trixie's source package once per machine, keeps the binary in a machine-wide
# cache and installs it as /usr/local/sbin/criu. Debian 12's own criu (3.17)
# fails `criu check` on current kernels (vDSO layout); 4.1.1 passes it.
#
# Idempotent: with the cached binary present it only (re)installs it (~0.1 s);
# the first run downloads the source package and the build dependencies from
# the host's Debian mirror and builds it (~66 s on 2 vCPUs).
#
# The trixie deb-src line lives in a private apt configuration under the build
# directory: the host's apt sources are never changed, so nothing from trixie
# is ever installed as a binary package (only bookworm's -dev packages are).
#
# Env: CAPSULE_CRIU_CACHE (default /var/cache/capsule/criu), CAPSULE_CRIU_PREFIX
# (default /usr/local/sbin). Exit 0 when a criu 4.x is installed.
set -euo pipefail

CACHE=${CAPSULE_CRIU_CACHE:-/var/cache/capsule/criu}
PREFIX=${CAPSULE_CRIU_PREFIX:-/usr/local/sbin}
BIN="$CACHE/criu"
say() { echo "capsule criu: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  say "needs root (it installs build dependencies and $PREFIX/criu)"
  exit 1
fi

install_bin() {
  mkdir -p "$PREFIX"
  if ! cmp -s "$BIN" "$PREFIX/criu"; then
    install -m 0755 "$BIN" "$PREFIX/criu.tmp.$$"
    mv -f "$PREFIX/criu.tmp.$$" "$PREFIX/criu"
    say "installed $PREFIX/criu ($("$BIN" --version | head -1), from $BIN)"
  fi
}

# 3.x is what fails on this kernel; any 4.x release passes.
is4() { "$1" --version 2>/dev/null | grep -qE '^Version: 4\.'; }

if [ -x "$BIN" ] && is4 "$BIN"; then
  install_bin
  exit 0
fi

deps=(dpkg-dev make gcc pkgconf libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev libnl-3-dev
  libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler uuid-dev python3-protobuf)
need=()
for p in "${deps[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
export DEBIAN_FRONTEND=noninteractive
if [ ${#need[@]} -gt 0 ]; then
  say "installing build dependencies: ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The mirror the host already uses (its deb822 or one-line sources), for the trixie source package.
mirror=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
  | grep -v security | head -1 | awk '{print $2}' || true)
mirror=${mirror:-http://deb.debian.org/debian}
mirror=${mirror%/}

work=$(mktemp -d /tmp/capsule-criu-build.XXXXXX)
chmod 755 "$work" # apt downloads as _apt where it can
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/apt/lists/partial" "$work/apt/parts" "$work/apt/cache" "$work/src"
printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" >"$work/apt/trixie-src.sources"
aptopts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$work/apt/parts" -o "Dir::State::Lists=$work/apt/lists"
  -o "Dir::Cache=$work/apt/cache" -o "APT::Sandbox::User=root")
cp "$work/apt/trixie-src.sources" "$work/apt/parts/"
say "fetching the criu source package from $mirror (trixie)"
apt-get "${aptopts[@]}" update -qq
# The whole source package (Debian's patches applied) when the mirror has it; some mirrors carry only
# the upstream tarball: then that, checked against the sha256 in the signed Sources index apt just verified.
if ! (cd "$work/src" && apt-get "${aptopts[@]}" source -qq criu >/dev/null 2>"$work/source.log"); then
  sources=$(find "$work/apt/lists" -name '*trixie_main_source_Sources*' | head -1)
  [ -n "$sources" ] || { cat "$work/source.log" >&2; say "no trixie Sources index"; exit 1; }
  read -r orig sha < <(/usr/lib/apt/apt-helper cat-file "$sources" | awk '
    /^Package: / { p = ($2 == "criu") } /^$/ { p = 0 }
    p && /^Checksums-Sha256:/ { c = 1; next } p && /^[A-Z]/ { c = 0 }
    p && c && $3 ~ /\.orig\.tar\./ { print $3, $1; exit }')
  [ -n "${orig:-}" ] || { cat "$work/source.log" >&2; say "criu is not in trixie's Sources index"; exit 1; }
  say "the mirror has no Debian source package; using the upstream tarball $orig (sha256 checked)"
  /usr/lib/apt/apt-helper download-file "$mirror/pool/main/c/criu/$orig" "$work/src/$orig" "SHA256:$sha" >/dev/null
  tar -xf "$work/src/$orig" -C "$work/src"
fi
dir=$(find "$work/src" -maxdepth 1 -type d -name "criu-*" | head -1)
[ -n "$dir" ] || { say "no source tree unpacked"; exit 1; }

say "building $(basename "$dir") (about a minute)"
started=$(date +%s)
make -C "$dir" -j"$(nproc)" criu >"$work/build.log" 2>&1 || {
  tail -30 "$work/build.log" >&2
  say "build failed"
  exit 1
}
out="$dir/criu/criu"
[ -x "$out" ] || { say "the build made no $out"; exit 1; }
is4 "$out" || { say "the built criu is not a 4.x release: $("$out" --version | head -1)"; exit 1; }
mkdir -p "$CACHE"
install -m 0755 "$out" "$BIN.tmp.$$"
mv -f "$BIN.tmp.$$" "$BIN"
say "built in $(( $(date +%s) - started )) s; cached as $BIN"
install_bin
