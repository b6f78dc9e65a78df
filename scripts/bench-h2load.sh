#!/usr/bin/env bash
# The server hot path under h2load (BENCHMARKS.md, "Server hot path", issue 20): the release
# server on Valkey with the validation cache (the default), the same with every span
# exported (OTLP, 100% sampling), and the storeless floor (`session-bench floor`) served by
# tonic's server ("floor") and by the service's own connection handling ("floor-svc"), each
# loaded with unary ValidateAccessToken and with ValidateAccessTokens of BATCH tokens, in
# rounds that alternate between them so machine noise hits all alike.
#
#   cargo build --release --workspace --bins    # barazo-session and session-bench
#   scripts/bench-h2load.sh                      # ROUNDS=3 DURATION=8 BATCH=64
#   OLD_SERVER=/path/to/older/barazo-session scripts/bench-h2load.sh
#       adds that build (unary only: it may predate ValidateAccessTokens)
#
# Needs h2load (Debian: nghttp2-client) and `.tools/bin` (scripts/tools.sh). Starts its own
# Valkey on a free port (no persistence) and stops everything it started when it ends.
# Load: h2load, 1 thread, 4 connections x 16 streams (-c 4 -m 16), the same request body
# every call (scripts/grpc-body.py), so every validation after the first is a cache hit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
BATCH=${BATCH:-64}
OLD_SERVER=${OLD_SERVER:-}
BIN=target/release
PATH=$PWD/.tools/bin:$PATH
source scripts/bench-lib.sh

require h2load valkey-server grpcurl python3 "$BIN/barazo-session" "$BIN/session-bench"

scratch
start_valkey
valkey=redis://127.0.0.1:$vport

"$BIN/session-bench" sink >"$work/sink.out" 2>&1 &
sink_pid=$!
pids+=($sink_pid)
wait_for "$work/sink.out" '^listening '
otlp=http://$(awk '/^listening /{print $2}' "$work/sink.out")

"$BIN/session-bench" floor >"$work/floor.out" 2>&1 &
pids+=($!)
wait_for "$work/floor.out" '^listening '
declare -A addr
addr[floor]=$(awk '/^listening /{print $2}' "$work/floor.out")
"$BIN/session-bench" floor --transport service >"$work/floor-svc.out" 2>&1 &
pids+=($!)
wait_for "$work/floor-svc.out" '^listening '
addr[floor-svc]=$(awk '/^listening /{print $2}' "$work/floor-svc.out")

# A barazo-session on the Valkey store, default log filter (RUST_LOG unset), JSON logs for
# its address. Extra environment comes first: start_server NAME BINARY [VAR=VALUE ...].
start_server() {
  local name=$1 binary=$2
  shift 2
  env -u RUST_LOG -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
    LOG_FORMAT=json "$@" "$binary" --listen 127.0.0.1:0 --store valkey --valkey-url "$valkey" \
    >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_for "$work/$name.log" '"listening"'
  addr[$name]=$(grep -o '"addr":"[^"]*"' "$work/$name.log" | head -1 | cut -d'"' -f4)
}
start_server cached "$BIN/barazo-session"
start_server traced "$BIN/barazo-session" OTEL_EXPORTER_OTLP_ENDPOINT="$otlp" OTEL_TRACES_SAMPLER=always_on
servers=(floor floor-svc cached traced)
if [[ -n $OLD_SERVER ]]; then
  start_server old "$OLD_SERVER"
  servers+=(old)
fi
for name in cached traced ${OLD_SERVER:+old}; do wait_serving "${addr[$name]}"; done

# BATCH sessions of a DID namespace of session-bench's (`.invalid`: no real account), in
# this run's own Valkey, which goes with it.
run=run-$(date +%s)-$(python3 -c 'import secrets; print(secrets.token_hex(3))')
for n in $(seq "$BATCH"); do
  grpcurl -plaintext "${PROTO[@]}" \
    -d "{\"did\": \"did:web:session-bench.invalid:$run:h2load:$n\", \"handle\": \"session-bench.invalid\"}" \
    "${addr[cached]}" "$SERVICE/CreateSession" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["accessToken"])'
done >"$work/tokens"
python3 scripts/grpc-body.py "$(head -1 "$work/tokens")" >"$work/one.bin"
python3 scripts/grpc-body.py --batch "$BATCH" - <"$work/tokens" >"$work/batch.bin"

# The requests each server is loaded with: "old" may predate the batch RPC.
bodies() {
  if [[ $1 == old ]]; then echo one; else echo one batch; fi
}

# Every server answers valid=true for the tokens before anything is measured (h2load sees
# HTTP status only, not grpc-status).
for name in "${servers[@]}"; do
  if [[ $name == old ]]; then
    grpcurl -plaintext "${PROTO[@]}" -d "{\"access_token\": \"$(head -1 "$work/tokens")\"}" \
      "${addr[$name]}" "$SERVICE/ValidateAccessToken" | grep -q '"valid": true' ||
      { echo "$name: the token is not valid" >&2; exit 1; }
    continue
  fi
  answer=$(grpcurl -plaintext "${PROTO[@]}" -d "{\"access_tokens\": $(python3 -c 'import json, sys; print(json.dumps(sys.stdin.read().split()))' <"$work/tokens")}" \
    "${addr[$name]}" "$SERVICE/ValidateAccessTokens")
  valid=$(grep -c '"valid": true' <<<"$answer" || true)
  [[ $valid == "$BATCH" ]] || { echo "$name: $valid of $BATCH tokens valid" >&2; exit 1; }
done

# h2load on NAME with BODY (one|batch) for SECONDS; prints "<calls/s> <mean ms>".
load() {
  local name=$1 body=$2 seconds=$3 method=ValidateAccessToken
  [[ $body == batch ]] && method=ValidateAccessTokens
  h2load_rate "${addr[$name]}" "$method" "$work/$body.bin" "$seconds"
}

echo "uptime at start: $(uptime)"
echo "warming up (2 s each)"
for name in "${servers[@]}"; do
  for body in $(bodies "$name"); do load "$name" "$body" 2 >/dev/null; done
done
declare -A sum
for round in $(seq "$ROUNDS"); do
  for name in "${servers[@]}"; do
    for body in $(bodies "$name"); do
      read -r rate mean < <(load "$name" "$body" "$DURATION")
      echo "round $round $name $body: $rate calls/s, mean $mean"
      sum[$name.$body]=$(python3 -c "print(${sum[$name.$body]:-0} + $rate)")
    done
  done
  echo "uptime after round $round: $(uptime)"
done

# Means, and each against the floor (calls/s; validations/s = calls/s x tokens per call).
echo
echo "| server | request | calls/s (mean of $ROUNDS x $DURATION s) | validations/s | / floor | / floor-svc |"
echo "|---|---|---|---|---|---|"
for name in "${servers[@]}"; do
  for body in $(bodies "$name"); do
    python3 - "$name" "$body" "${sum[$name.$body]}" "${sum[floor.$body]}" "${sum[floor-svc.$body]}" "$ROUNDS" "$BATCH" <<'EOF'
import sys
name, body, total, floor, floor_svc, rounds, batch = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
calls = total / rounds
tokens = batch if body == "batch" else 1
request = f"ValidateAccessTokens x {int(batch)}" if body == "batch" else "ValidateAccessToken"
print(f"| {name} | {request} | {calls:,.0f} | {calls * tokens:,.0f} | {total / floor:.2f} | {total / floor_svc:.2f} |")
EOF
  done
done
python3 - "${sum[cached.batch]}" "${sum[cached.one]}" "$BATCH" <<'EOF'
import sys
batch, one, n = map(float, sys.argv[1:])
print(f"cached: validations/s in batches of {int(n)} / unary: {batch * n / one:.1f}x")
EOF

kill -INT "$sink_pid"
wait "$sink_pid" 2>/dev/null || true
echo "OTLP sink: $(grep 'spans received' "$work/sink.out")"
echo "uptime at end: $(uptime)"
