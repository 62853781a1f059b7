#!/usr/bin/env bash
# Runs every test of lula from a clean clone: formatting, lints, unit,
# integration and end-to-end tests (each test starts its own redis-server on a
# free port), then a short run of the demo so it cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis
ensure_tool oathtool oathtool "an independent TOTP implementation lula's codes are checked against"
ensure_tool haproxy haproxy "a real load balancer in front of several hubs"
ensure_tool promtool prometheus "Prometheus's own linter for /metrics and the alert rules"
ensure_tool chromium chromium "a real browser for the fleet page test"
ensure_tool chromedriver chromium-driver "drives that browser (WebDriver)"
# Tests that need one of these tools fail instead of skipping when it is missing.
export LULA_REQUIRE_TOOLS=1
echo "==> $(redis-server --version | cut -d' ' -f1-3)"

echo "==> cargo fmt --check"
cargo fmt --all --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> deploy/k8s: kustomize render + schema validation"
scripts/validate-k8s.sh

echo "==> Dockerfile: hadolint + what the image must have"
scripts/lint-dockerfile.sh

echo "==> cargo test"
cargo test --workspace --locked

# lula-client for the devices: cross-build arm64 and armv7 (cached between
# runs in /var/cache/lula/device-target), check each package, and run the
# end-to-end test with each binary under qemu-user against the x86_64 cloud.
# LULA_SKIP_DEVICE_BUILD=1 tests binaries already in target/device/ without
# building them, and skips (loudly) an arch whose binary is missing.
for arch in arm64 armv7; do
  case $arch in
    arm64) qemu="qemu-aarch64-static" ;;
    armv7) qemu="qemu-arm-static" ;;
  esac
  bin=target/device/$arch/lula-client
  if [ "${LULA_SKIP_DEVICE_BUILD:-0}" = 1 ]; then
    if [ ! -x "$bin" ]; then
      echo "!!!!!!!! SKIPPED: no $bin and LULA_SKIP_DEVICE_BUILD=1: the $arch build, package and qemu e2e test did NOT run !!!!!!!!" >&2
      continue
    fi
  else
    echo "==> device build: $arch"
    scripts/build-device.sh "$arch"
  fi
  echo "==> device package: $arch"
  scripts/check-device-package.sh target/device/"$arch"/lula-client_*.deb
  echo "==> device e2e under qemu-user: $arch"
  ensure_tool "${qemu%% *}" qemu-user-static "runs the cross-built lula-client in the end-to-end test"
  # qemu-user runs the binary against the target's own glibc, installed by
  # multiarch (libc6:arm64 / libc6:armhf, see build-device.sh), not with
  # `-L /usr/<triplet>`: the cross toolchain's older libc6-*-cross copy
  # hangs (arm64) or crashes (armv7) at the first thread under qemu 7.2.
  # If the binary cannot run here at all, say so instead of timing out.
  # shellcheck disable=SC2086
  if ! timeout 60 $qemu "$bin" --version >/dev/null 2>&1; then
    if [ "${LULA_SKIP_DEVICE_E2E:-0}" = 1 ]; then
      echo "!!!!!!!! SKIPPED: $qemu cannot run $bin on this host (no threads under qemu-user?) and LULA_SKIP_DEVICE_E2E=1: the $arch e2e test did NOT run !!!!!!!!" >&2
      continue
    fi
    echo "FAILED: $qemu cannot run $bin --version on this host (threads under qemu-user?); set LULA_SKIP_DEVICE_E2E=1 to skip it loudly" >&2
    exit 1
  fi
  LULA_CLIENT_BIN=$PWD/$bin LULA_CLIENT_RUNNER="$qemu" \
    cargo test -p lula-e2e --locked --test device_binary
done

echo "==> demo (short run)"
LULA_DEMO_PROFILE=debug scripts/demo.sh --once

echo "==> all tests passed"
