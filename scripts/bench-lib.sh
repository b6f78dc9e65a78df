# Shared by the h2load benchmark scripts (sourced, not run).

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
