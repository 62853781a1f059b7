#!/usr/bin/env bash
# The benchmark: builds lula-bench in release and runs every scenario (the
# raw-Redis baseline, upstream, latency, fan-in, downstream, idle connections)
# at full size, each verified exactly once, printing one table.
#
#   scripts/bench.sh                          # everything, full size (a few minutes)
#   scripts/bench.sh --scenario upstream      # one scenario (the baseline always runs)
#   scripts/bench.sh --smoke                  # tiny sizes, seconds
#   scripts/bench.sh --upstream-entries 200000 --json
#
# Arguments go to `lula-bench run` (see `target/release/lula-bench run --help`;
# every flag is also an environment variable). The table is also saved in
# $LULA_BENCH_DIR (default target/bench), next to the log of the clients and
# lula-auth, which run inside lula-bench; the hub runs as a child process.
# Exits non-zero when a scenario fails to run or to verify.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis

echo "==> cargo build --release -p lula-bench" >&2
cargo build --release --locked -p lula-bench

# 10,000 idle devices need that many sockets in the hub and in lula-bench.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 12000 ]; then
  echo "warning: ulimit -n is $(ulimit -n); the connections scenario needs about 12000" >&2
fi

dir="${LULA_BENCH_DIR:-target/bench}"
mkdir -p "$dir"
log="$dir/lula-bench.log"
echo "==> lula-bench run $* (client and auth log: $log, table: $dir/report.txt)" >&2
status=0
target/release/lula-bench run --log-file "$log" "$@" | tee "$dir/report.txt" || status=$?

warnings=$(grep -c -E ' (WARN|ERROR) ' "$log" || true)
if [ "${warnings:-0}" -gt 0 ]; then
  echo "clients and lula-auth logged $warnings warning(s)/error(s); see $log" >&2
fi
exit "$status"
