#!/usr/bin/env bash
# Forward auth against gRPC on one server (BENCHMARKS.md, "Forward auth and introspection",
# issue 25): the release server on Valkey with the validation cache (the default) and the
# HTTP listener, loaded in alternating rounds with
#   grpc   cached unary ValidateAccessToken (h2load, 4 connections x 16 streams),
#   grpc-c64  the same over 64 connections x 1 stream (the shape of HTTP/1.1 below),
#   fa-h2  GET /v1/forward-auth over HTTP/2 (h2c, 4 connections x 16 streams),
#   fa-h1  GET /v1/forward-auth over HTTP/1.1 keep-alive (64 connections, as nginx's
#          auth_request opens one subrequest per request),
#   intro  POST /v1/introspect over HTTP/1.1 keep-alive (64 connections),
# the same valid token every request, so every validation after the first is a cache hit.
#
#   cargo build --release --bin barazo-session
#   scripts/bench-forward-auth.sh                # ROUNDS=3 DURATION=8
#
# Needs h2load (Debian: nghttp2-client) and `.tools/bin` (scripts/tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
BIN=target/release
PATH=$PWD/.tools/bin:$PATH
source scripts/bench-lib.sh

require h2load valkey-server grpcurl python3 "$BIN/barazo-session"

scratch
start_valkey

env -u RUST_LOG -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT LOG_FORMAT=json \
  "$BIN/barazo-session" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --store valkey \
  --valkey-url "redis://127.0.0.1:$vport" >"$work/server.log" 2>&1 &
pids+=($!)
wait_for "$work/server.log" '"listening"'
grpc=$(grep -o '"addr":"[^"]*"' "$work/server.log" | head -1 | cut -d'"' -f4)
http=$(grep -o '"http":"[^"]*"' "$work/server.log" | head -1 | cut -d'"' -f4)
wait_serving "$grpc"

run=run-$(date +%s)-$(python3 -c 'import secrets; print(secrets.token_hex(3))')
token=$(grpcurl -plaintext "${PROTO[@]}" \
  -d "{\"did\": \"did:web:session-bench.invalid:$run:fa\", \"handle\": \"session-bench.invalid\"}" \
  "$grpc" "$SERVICE/CreateSession" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["accessToken"])')
python3 scripts/grpc-body.py "$token" >"$work/one.bin"
printf 'token=%s' "$token" >"$work/form"

# Every path answers as valid before anything is measured.
curl -sf -o /dev/null -H "Authorization: Bearer $token" "http://$http/v1/forward-auth" ||
  { echo "forward auth refused the token" >&2; exit 1; }
curl -sf --data-binary "@$work/form" -H 'content-type: application/x-www-form-urlencoded' \
  "http://$http/v1/introspect" | grep -q '"active":true' ||
  { echo "introspection says inactive" >&2; exit 1; }

# h2load on KIND for SECONDS; prints "<requests/s> <mean>", or fails on any non-2xx.
load() {
  local kind=$1 seconds=$2 out
  case $kind in
    grpc) h2load_rate "$grpc" ValidateAccessToken "$work/one.bin" "$seconds"; return ;;
    grpc-c64) out=$(h2load -c 64 -m 1 -t 1 -D "$seconds" -d "$work/one.bin" \
      -H 'content-type: application/grpc' -H 'te: trailers' \
      "http://$grpc/$SERVICE/ValidateAccessToken") ;;
    fa-h2) out=$(h2load -c 4 -m 16 -t 1 -D "$seconds" -H "authorization: Bearer $token" \
      "http://$http/v1/forward-auth") ;;
    fa-h1) out=$(h2load --h1 -c 64 -t 1 -D "$seconds" -H "authorization: Bearer $token" \
      "http://$http/v1/forward-auth") ;;
    intro) out=$(h2load --h1 -c 64 -t 1 -D "$seconds" -d "$work/form" \
      -H 'content-type: application/x-www-form-urlencoded' "http://$http/v1/introspect") ;;
  esac
  grep -q ' 0 failed, 0 errored' <<<"$out" || { echo "$kind: $out" >&2; exit 1; }
  grep -qE 'status codes: [0-9]+ 2xx, 0 3xx, 0 4xx, 0 5xx' <<<"$out" || { echo "$kind: $out" >&2; exit 1; }
  echo "$(awk '/^finished in/{print $4}' <<<"$out") $(awk '/^time for request:/{print $6}' <<<"$out")"
}

kinds=(grpc fa-h2 grpc-c64 fa-h1 intro)
echo "uptime at start: $(uptime)"
for kind in "${kinds[@]}"; do load "$kind" 2 >/dev/null; done
declare -A sum
for round in $(seq "$ROUNDS"); do
  for kind in "${kinds[@]}"; do
    read -r rate mean < <(load "$kind" "$DURATION")
    echo "round $round $kind: $rate requests/s, mean $mean"
    sum[$kind]=$(python3 -c "print(${sum[$kind]:-0} + $rate)")
  done
done
echo
echo "| load | requests/s (mean of $ROUNDS x $DURATION s) | / grpc | / grpc-c64 |"
echo "|---|---|---|---|"
for kind in "${kinds[@]}"; do
  python3 -c "import sys; k, t, g, g64, r = sys.argv[1], *map(float, sys.argv[2:]); print(f'| {k} | {t / r:,.0f} | {t / g:.2f} | {t / g64:.2f} |')" \
    "$kind" "${sum[$kind]}" "${sum[grpc]}" "${sum[grpc-c64]}" "$ROUNDS"
done
echo "uptime at end: $(uptime)"
