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

echo "==> demo (short run)"
LULA_DEMO_PROFILE=debug scripts/demo.sh --once

echo "==> all tests passed"
