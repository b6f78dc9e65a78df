# Shared by the h2load benchmark scripts (sourced, not run, from the repository root).

PROTO=(-import-path proto -proto barazo/session/v1/session.proto)
SERVICE=barazo.session.v1.SessionService

# Exits naming the first TOOL that is not on PATH.
require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
  done
}

# A scratch directory ($work) and the background processes started for the run ($pids):
# every one stopped, and the directory removed, when the script exits.
scratch() {
  work=$(mktemp -d)
  pids=()
  trap finish EXIT
}

finish() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# A throwaway valkey-server (no persistence) on a free port, among $pids; sets $vport.
start_valkey() {
  vport=$(free_port)
  valkey-server --port "$vport" --save '' --appendonly no >"$work/valkey.log" 2>&1 &
  pids+=($!)
  wait_for "$work/valkey.log" 'Ready to accept connections'
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until FILE has a line matching PATTERN (a started process says where it listens).
wait_for() {
  local file=$1 pattern=$2
  for _ in $(seq 300); do
    grep -q "$pattern" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing matching $pattern in $file:" >&2
  cat "$file" >&2
  exit 1
}

# Waits until the service at ADDR answers gRPC health SERVING (its store reachable); fails
# after 10 s.
wait_serving() {
  local addr=$1
  for _ in $(seq 100); do
    grpcurl -plaintext -d '{}' "$addr" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"' && return 0
    sleep 0.1
  done
  echo "$addr: not SERVING within 10 s" >&2
  exit 1
}

# h2load at ADDR's METHOD with the gRPC request in BODY_FILE for SECONDS: 1 thread,
# 4 connections x 16 streams; prints "<calls/s> <mean>", or fails on any failed call.
h2load_rate() {
  local addr=$1 method=$2 body_file=$3 seconds=$4 out rate mean
  out=$(h2load -c 4 -m 16 -t 1 -D "$seconds" -d "$body_file" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$addr/barazo.session.v1.SessionService/$method")
  grep -q ' 0 failed, 0 errored' <<<"$out" || { echo "$addr $method: $out" >&2; exit 1; }
  rate=$(awk '/^finished in/{print $4}' <<<"$out")
  mean=$(awk '/^time for request:/{print $6}' <<<"$out")
  echo "$rate $mean"
}
