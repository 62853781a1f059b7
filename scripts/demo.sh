#!/usr/bin/env bash
# lula, live: a device Redis -> lula-client -> lula-hub -> a cloud Redis, and back.
#
# Starts two Redis servers (one playing the device, one the cloud), lula-auth,
# lula-hub and one lula-client; provisions the device; publishes events with
# plain redis-cli XADD on the device; shows them arriving in the cloud through
# XREADGROUP; sends a message down and a broadcast and shows them in the device's in stream.
# Then keeps publishing one event every 2 seconds until Ctrl-C, which stops
# everything it started.
#
#   scripts/demo.sh           # the live demo
#   scripts/demo.sh --once    # the scripted part only, then exit (used by scripts/test.sh)
#
# Environment: LULA_DEMO_PROFILE=debug|release (default release), LULA_DEMO_DIR (logs, state).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

once=false
[ "${1:-}" = "--once" ] && once=true
profile="${LULA_DEMO_PROFILE:-release}"

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
step() { printf '\033[36m$ %s\033[0m\n' "$*"; }

ensure_redis

bold "Building lula ($profile)"
if [ "$profile" = release ]; then
  cargo build --release --locked --bin lula-auth --bin lula-hub --bin lula-client
else
  cargo build --locked --bin lula-auth --bin lula-hub --bin lula-client
fi
bin="$(pwd)/target/$profile"

dir="${LULA_DEMO_DIR:-$(mktemp -d -t lula-demo.XXXXXX)}"
mkdir -p "$dir"
pids=()

cleanup() {
  trap - EXIT INT TERM
  bold "Stopping everything the demo started"
  # The client first, with SIGTERM: it finishes its batch in flight and exits 0.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for port in "${device_port:-}" "${cloud_port:-}"; do
    [ -n "$port" ] && redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  echo "logs and state are in $dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p=$1
  while port_busy "$p"; do p=$((p + 1)); done
  echo "$p"
}
wait_port() {
  for _ in $(seq 1 200); do port_busy "$1" && return 0; sleep 0.05; done
  echo "nothing listens on port $1; see the logs in $dir" >&2
  return 1
}
start_redis() {
  redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --dir "$dir" --dbfilename "$2.rdb" --logfile "$dir/$2-redis.log" &
  pids+=($!)
  wait_port "$1"
}

bold "Starting a device Redis and a cloud Redis"
device_port=$(free_port 16379); start_redis "$device_port" device
cloud_port=$(free_port 26379); start_redis "$cloud_port" cloud
dev() { redis-cli -p "$device_port" "$@"; }
cloud() { redis-cli -p "$cloud_port" "$@"; }
echo "device Redis on $device_port, cloud Redis on $cloud_port"

bold "Starting lula-auth and lula-hub (cloud side)"
export RUST_LOG="${RUST_LOG:-info}"
auth_port=$(free_port 13001)
auth_admin_port=$(free_port 19091)
REDIS_URL="redis://127.0.0.1:$cloud_port" "$bin/lula-auth" serve --listen "127.0.0.1:$auth_port" \
  --admin-listen "127.0.0.1:$auth_admin_port" >"$dir/auth.log" 2>&1 &
pids+=($!)
wait_port "$auth_port"
wait_port "$auth_admin_port"
hub_port=$(free_port 13002)
hub_admin_port=$(free_port 19090)
REDIS_URL="redis://127.0.0.1:$cloud_port" "$bin/lula-hub" serve --listen "127.0.0.1:$hub_port" \
  --admin-listen "127.0.0.1:$hub_admin_port" >"$dir/hub.log" 2>&1 &
pids+=($!)
wait_port "$hub_port"
wait_port "$hub_admin_port"
echo "lula-auth on http://127.0.0.1:$auth_port, lula-hub on ws://127.0.0.1:$hub_port"
echo "admin (probes, /metrics): http://127.0.0.1:$auth_admin_port and http://127.0.0.1:$hub_admin_port"

bold "Provisioning device 'demo-device' (an operator does this once per device)"
step "lula-auth provision demo-device --json"
provisioned=$(REDIS_URL="redis://127.0.0.1:$cloud_port" "$bin/lula-auth" provision demo-device --json)
echo "$provisioned"
otp_secret=$(printf '%s' "$provisioned" | sed -n 's/.*"otpSecret" *: *"\([A-Z2-7]*\)".*/\1/p')
[ -n "$otp_secret" ] || { echo "could not read otpSecret from the provision output" >&2; exit 1; }

bold "Starting lula-client on the device"
step "lula-client run --client-id demo-device --otp-secret-file <0600 file> ..."
(umask 077 && printf '%s\n' "$otp_secret" >"$dir/otp-secret")
"$bin/lula-client" run --client-id demo-device --otp-secret-file "$dir/otp-secret" \
  --auth-url "http://127.0.0.1:$auth_port" --hub-url "ws://127.0.0.1:$hub_port" \
  --redis-url "redis://127.0.0.1:$device_port" --state-dir "$dir/client-state" >"$dir/client.log" 2>&1 &
client_pid=$!
pids=("$client_pid" "${pids[@]}")

bold "A cloud service creates a consumer group on the hub's in stream"
step "XGROUP CREATE lula-hub:in:x demo 0 MKSTREAM"
cloud XGROUP CREATE lula-hub:in:x demo 0 MKSTREAM

bold "Programs on the device publish events with plain XADD"
for reading in "temperature 21.5" "temperature 21.7" "door open"; do
  set -- $reading
  step "XADD lula-client:out:x * sensor $1 value $2"
  dev XADD lula-client:out:x '*' sensor "$1" value "$2"
done

bold "The cloud service reads them with XREADGROUP (client and seq added by the hub)"
step "XREADGROUP GROUP demo worker-1 COUNT 10 BLOCK 1000 STREAMS lula-hub:in:x >"
got=0
for _ in $(seq 1 60); do
  out=$(cloud XREADGROUP GROUP demo worker-1 COUNT 10 BLOCK 1000 STREAMS lula-hub:in:x '>')
  if [ -n "$out" ]; then
    echo "$out"
    got=$((got + $(printf '%s\n' "$out" | grep -c '^demo-device$' || true)))
  fi
  [ "$got" -ge 3 ] && break
done
[ "$got" -ge 3 ] || { echo "events did not arrive; see $dir/client.log and $dir/hub.log" >&2; exit 1; }

bold "The cloud sends one message down to the device"
step "XADD lula-hub:out:demo-device:x * cmd set-interval seconds 30"
cloud XADD lula-hub:out:demo-device:x '*' cmd set-interval seconds 30
step "XRANGE lula-client:in:x - +     (on the device; seq = the hub's id)"
for _ in $(seq 1 100); do
  [ "$(dev XLEN lula-client:in:x)" -ge 1 ] && break
  sleep 0.1
done
dev XRANGE lula-client:in:x - +
[ "$(dev XLEN lula-client:in:x)" -ge 1 ] || { echo "the message did not arrive; see $dir/client.log" >&2; exit 1; }

bold "The cloud broadcasts once to every device"
step "XADD lula-hub:broadcast:x * notice maintenance at 02:00"
cloud XADD lula-hub:broadcast:x '*' notice 'maintenance at 02:00'
step "XRANGE lula-client:in:x - +     (on the device; broadcast = the broadcast's id)"
for _ in $(seq 1 100); do
  [ "$(dev XLEN lula-client:in:x)" -ge 2 ] && break
  sleep 0.1
done
dev XRANGE lula-client:in:x - +
[ "$(dev XLEN lula-client:in:x)" -ge 2 ] || { echo "the broadcast did not arrive; see $dir/client.log" >&2; exit 1; }

bold "lula-client status"
# The daemon publishes its cursors about once a second; wait for the write
# that follows the hub's acknowledgement, so the status agrees with what the
# cloud received above (its "figures as of" line says how old they are).
status=("$bin/lula-client" status --redis-url "redis://127.0.0.1:$device_port" --state-dir "$dir/client-state")
caught_up() { [[ "$("${status[@]}" --json)" == *'"upstreamBacklog": 0,'* ]]; }
for _ in $(seq 1 100); do
  caught_up && break
  sleep 0.1
done
"${status[@]}"
caught_up || { echo "the status still shows an upstream backlog; see $dir/client.log" >&2; exit 1; }
step "lula-client status --check     (the health check: exit 0 when connected and draining)"
"${status[@]}" --check

if $once; then
  bold "Demo done"
  exit 0
fi

bold "Live: one event every 2 seconds from the device; Ctrl-C to stop"
n=0
while true; do
  n=$((n + 1))
  id=$(dev XADD lula-client:out:x '*' sensor counter value "$n")
  printf 'device  XADD  %s  counter=%s\n' "$id" "$n"
  cloud XREADGROUP GROUP demo worker-1 COUNT 10 BLOCK 2000 STREAMS lula-hub:in:x '>' \
    | paste -sd' ' - | sed 's/^/cloud   READ  /'
  sleep 2
done
