#!/usr/bin/env bash
# Builds lula-client for a device with the dist profile and packages it:
#
#   scripts/build-device.sh arm64|armv7|x86_64
#
# writes into target/device/<arch>/ (or $LULA_DEVICE_OUT):
#   lula-client                   stripped binary
#   lula-client.debug             its debug info (line tables), linked from the
#                                 binary by .gnu_debuglink: gdb/addr2line find it
#   lula-client_<version>_<debian arch>.deb
#
# Cross builds use Debian's rustc-web/cargo-web with the target's std from
# libstd-rust-web-dev:<arch> (multiarch) and the gcc cross toolchains: all from
# the Debian archive, so a clean Debian 12 machine with no rustup targets and no
# network beyond the package registries can build them. x86_64 uses the same
# compiler, so the three sizes compare. Run as root, it installs what it needs.
#
# Cargo's target dir lives in $LULA_DEVICE_CACHE (default
# /var/cache/lula/device-target, or ~/.cache/lula/device-target when that is not
# writable): CI clones fresh each run, and a second run on the same machine
# only relinks what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:-}
case "$arch" in
  arm64) triple=aarch64-unknown-linux-gnu deb_arch=arm64 gnu=aarch64-linux-gnu ;;
  armv7) triple=armv7-unknown-linux-gnueabihf deb_arch=armhf gnu=arm-linux-gnueabihf ;;
  x86_64) triple=x86_64-unknown-linux-gnu deb_arch=amd64 gnu=x86_64-linux-gnu ;;
  *)
    echo "usage: $0 arm64|armv7|x86_64" >&2
    exit 2
    ;;
esac

# Debian's rustc-web: /usr/bin/rustc and /usr/bin/cargo, not rustup's proxies
# (rustup cannot add targets offline, and its std would not match anyway).
RUSTC_WEB=/usr/bin/rustc
CARGO_WEB=/usr/bin/cargo

apt_install() {
  if [ "$(id -u)" != "0" ]; then
    echo "missing: $*; install them (sudo apt-get install $*) or run this script as root" >&2
    exit 1
  fi
  echo "==> apt-get install $*" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "$@" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq "$@" >/dev/null; }
}

ensure_packages() {
  # libc6:<arch> (multiarch): the target's glibc, which qemu-user runs the
  # binary against in scripts/test.sh.
  local want=(rustc-web cargo-web "libstd-rust-web-dev:$deb_arch" "libc6:$deb_arch" dpkg-dev binutils)
  if [ "$arch" != x86_64 ]; then
    want+=("gcc-$gnu" "binutils-$gnu" "libc6-dev-$deb_arch-cross")
    if ! dpkg --print-foreign-architectures | grep -qx "$deb_arch"; then
      [ "$(id -u)" = "0" ] || { echo "run as root once: dpkg --add-architecture $deb_arch" >&2; exit 1; }
      dpkg --add-architecture "$deb_arch"
      apt-get update -qq >/dev/null
    fi
  fi
  local missing=()
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
}

cache_dir() {
  if [ -n "${LULA_DEVICE_CACHE:-}" ]; then
    echo "$LULA_DEVICE_CACHE"
  elif mkdir -p /var/cache/lula/device-target 2>/dev/null && [ -w /var/cache/lula/device-target ]; then
    echo /var/cache/lula/device-target
  else
    echo "${XDG_CACHE_HOME:-$HOME/.cache}/lula/device-target"
  fi
}

build() {
  local upper=${triple^^}
  upper=${upper//-/_}
  local under=${triple//-/_}
  # The dist profile is stripped (what container images ship); here it keeps
  # line tables so they can be split off into lula-client.debug below.
  env "CARGO_TARGET_${upper}_LINKER=$gnu-gcc" \
    "CC_${under}=$gnu-gcc" "AR_${under}=$gnu-ar" \
    RUSTC="$RUSTC_WEB" CARGO_TARGET_DIR="$target_dir" \
    "$CARGO_WEB" build --locked -p lula-client --bin lula-client \
    --profile dist --target "$triple" \
    --config 'profile.dist.strip="none"' \
    --config 'profile.dist.debug="line-tables-only"'
}

split_debug() {
  local built=$target_dir/$triple/dist/lula-client
  rm -f "$out/lula-client" "$out/lula-client.debug"
  "$gnu-objcopy" --only-keep-debug --compress-debug-sections "$built" "$out/lula-client.debug"
  "$gnu-objcopy" --strip-all --add-gnu-debuglink="$out/lula-client.debug" "$built" "$out/lula-client"
  chmod 644 "$out/lula-client.debug"
  chmod 755 "$out/lula-client"
}

# A .deb from a staged tree (dpkg-deb; no cargo-deb, which would have to be
# built from crates.io). Layout: docs/DEVICE.md.
package() {
  local version stage
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' RETURN
  chmod 755 "$stage" # the package's root is /
  install -D -m 755 "$out/lula-client" "$stage/usr/bin/lula-client"
  install -D -m 644 client/pkg/lula-client.service "$stage/usr/lib/systemd/system/lula-client.service"
  install -D -m 644 client/pkg/lula-client-check.service "$stage/usr/lib/systemd/system/lula-client-check.service"
  install -D -m 644 client/pkg/lula-client-check.timer "$stage/usr/lib/systemd/system/lula-client-check.timer"
  install -D -m 644 client/pkg/lula-client.env "$stage/etc/lula-client/lula-client.env"
  install -D -m 644 docs/DEVICE.md "$stage/usr/share/doc/lula-client/DEVICE.md"
  install -d -m 755 "$stage/DEBIAN"
  install -m 755 client/pkg/postinst client/pkg/prerm client/pkg/postrm "$stage/DEBIAN/"
  echo /etc/lula-client/lula-client.env >"$stage/DEBIAN/conffiles"
  local size glibc
  size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
  # The newest glibc symbol version the binary needs is the libc6 it needs.
  glibc=$("$gnu-objdump" -T "$out/lula-client" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
  cat >"$stage/DEBIAN/control" <<CONTROL
Package: lula-client
Version: $version
Architecture: $deb_arch
Maintainer: lula maintainers <lula@lula-sync.invalid>
Installed-Size: $size
Depends: libc6 (>= $glibc), adduser
Recommends: redis-server
Section: net
Priority: optional
Homepage: https://github.com/lula-sync/lula
Description: sync a device's Redis streams with lula-hub, exactly once
 lula-client registers the device with lula-auth, keeps a WebSocket to
 lula-hub, pushes the local out stream up and stores the hub's messages
 down, each exactly once, resuming by itself after any failure.
CONTROL
  rm -f "$out"/lula-client_*.deb
  dpkg-deb --root-owner-group -Zxz --build "$stage" "$out/lula-client_${version}_${deb_arch}.deb" >/dev/null
}

ensure_packages
target_dir=$(cache_dir)
out=${LULA_DEVICE_OUT:-target/device/$arch}
mkdir -p "$target_dir" "$out"
echo "==> lula-client for $triple (dist profile), target dir $target_dir" >&2
start=$(date +%s)
build
split_debug
package
echo "==> $out ($(($(date +%s) - start)) s):" >&2
ls -l "$out" >&2
