#!/usr/bin/env bash
# The fault-injection suite, long mode: builds lula-chaos in release and runs
# the full workload (20 devices x 20,000 entries up and 2,000 down, more in
# long runs) for as long as asked, while a fault proxy cuts, stalls, delays and
# cuts mid-frame, and the hub, daemons, device Redis and hub Redis are killed
# and restarted, twin daemons run and tokens expire. Then it checks both
# directions entry by entry and prints the table.
#
#   scripts/chaos.sh                      # 3 minutes of faults (plus drain and check)
#   scripts/chaos.sh --duration 10m       # as long as you like
#   scripts/chaos.sh --seed 1234          # repeat a run's random choices
#   scripts/chaos.sh --mode short         # what `cargo test` runs, in release
#
# Arguments go to `lula-chaos run` (see `target/release/lula-chaos run --help`;
# every flag is also an environment variable). Logs of every process, the
# timeline (events.log) and the report are kept in the run dir, by default
# target/chaos/<time>-<seed>. Exits non-zero when anything was lost,
# duplicated or reordered, or a process crashed or never recovered.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis

echo "==> cargo build --release -p lula-chaos" >&2
cargo build --release --locked -p lula-chaos

# 20 daemons, their twins, proxies and Redis connections.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

args=("$@")
have_run_dir=no
for a in "$@"; do
  case "$a" in
    --run-dir|--run-dir=*) have_run_dir=yes ;;
  esac
done
if [ "$have_run_dir" = no ] && [ -z "${LULA_CHAOS_RUN_DIR:-}" ]; then
  run_dir="target/chaos/$(date -u +%Y%m%dT%H%M%SZ)-$$"
  mkdir -p "$run_dir"
  args+=(--run-dir "$run_dir")
fi

echo "==> lula-chaos run ${args[*]}" >&2
exec target/release/lula-chaos run "${args[@]}"
