#!/usr/bin/env bash
# Cached validation in cluster mode against the memory store (BENCHMARKS.md, "Valkey Cluster
# with the cache"): h2load on three release servers side by side, in alternating rounds so
# machine noise hits all alike: the memory store, a three-primary Valkey Cluster with the
# validation cache (the default), and the same cluster with the cache off. Then the
# revocation propagation between two cluster replicas under 16 callers of load.
#
#   cargo build --release --workspace --bins    # barazo-session and session-bench
#   scripts/bench-cluster.sh                     # ROUNDS=3 DURATION=8 PROPAGATION=1000
#
# Needs h2load (Debian: nghttp2-client), grpcurl and valkey-server (scripts/tools.sh).
# Starts its own cluster (scripts/valkey-cluster.py, no persistence) and stops everything it
# started when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
PROPAGATION=${PROPAGATION:-1000}
BIN=target/release
PATH=$PWD/.tools/bin:$PATH
source scripts/bench-lib.sh

require h2load valkey-server grpcurl python3 "$BIN/barazo-session" "$BIN/session-bench"

scratch

python3 scripts/valkey-cluster.py >"$work/cluster.out" 2>&1 &
pids+=($!)
wait_for "$work/cluster.out" '^seeds '
seeds=$(awk '/^seeds /{print $2}' "$work/cluster.out")

declare -A addr
# start_server NAME FLAGS...: a release server, JSON logs for its address.
start_server() {
  local name=$1
  shift
  env -u RUST_LOG -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
    LOG_FORMAT=json "$BIN/barazo-session" --listen 127.0.0.1:0 "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_for "$work/$name.log" '"listening"'
  addr[$name]=$(grep -o '"addr":"[^"]*"' "$work/$name.log" | head -1 | cut -d'"' -f4)
}
start_server memory --store memory
start_server cluster --store valkey --valkey-mode cluster --valkey-url "$seeds"
start_server cluster-off --store valkey --valkey-mode cluster --valkey-url "$seeds" --validation-cache off
servers=(memory cluster cluster-off)
# Every server SERVING, and the cluster's cache live (its log says so), before any load.
for name in "${servers[@]}"; do wait_serving "${addr[$name]}"; done
wait_for "$work/cluster.log" 'validation cache live'

run=run-$(date +%s)-$(python3 -c 'import secrets; print(secrets.token_hex(3))')
for name in "${servers[@]}"; do
  token=$(grpcurl -plaintext "${PROTO[@]}" \
    -d "{\"did\": \"did:web:session-bench.invalid:$run:$name\", \"handle\": \"session-bench.invalid\"}" \
    "${addr[$name]}" "$SERVICE/CreateSession" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["accessToken"])')
  grpcurl -plaintext "${PROTO[@]}" -d "{\"access_token\": \"$token\"}" \
    "${addr[$name]}" "$SERVICE/ValidateAccessToken" | grep -q '"valid": true' ||
    { echo "$name: the token is not valid" >&2; exit 1; }
  python3 scripts/grpc-body.py "$token" >"$work/$name.bin"
done

echo "uptime at start: $(uptime)"
for name in "${servers[@]}"; do
  h2load_rate "${addr[$name]}" ValidateAccessToken "$work/$name.bin" 2 >/dev/null
done
declare -A sum
for round in $(seq "$ROUNDS"); do
  for name in "${servers[@]}"; do
    read -r rate mean < <(h2load_rate "${addr[$name]}" ValidateAccessToken "$work/$name.bin" "$DURATION")
    echo "round $round $name: $rate calls/s, mean $mean"
    sum[$name]=$(python3 -c "print(${sum[$name]:-0} + $rate)")
  done
done
echo
echo "| server | calls/s (mean of $ROUNDS x $DURATION s) | / memory |"
echo "|---|---|---|"
for name in "${servers[@]}"; do
  python3 -c "import sys; t, m, r = map(float, sys.argv[1:]); print(f'| $name | {t / r:,.0f} | {t / m:.2f} |')" \
    "${sum[$name]}" "${sum[memory]}" "$ROUNDS"
done
echo "uptime after h2load: $(uptime)"

if [[ $PROPAGATION -gt 0 ]]; then
  echo
  echo "propagation ($PROPAGATION revocations, B under 16 callers):"
  "$BIN/session-bench" --store valkey --valkey-mode cluster --valkey-url "$seeds" \
    --propagation "$PROPAGATION" --callers 16
fi
