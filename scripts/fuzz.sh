#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time, starting from its seeds; a panic, a
# failed property or a sanitizer report in any target fails the script (libFuzzer exits
# non-zero and cargo-fuzz passes that on). Used by .ci/run; also the way to run them by hand.
#
#   scripts/fuzz.sh              # every target, FUZZ_SECONDS (default 30) each
#   scripts/fuzz.sh policy 600   # one target, ten minutes
#
# Needs only the stable toolchain: RUSTC_BOOTSTRAP=1 unlocks the nightly flags cargo-fuzz
# passes (-Zsanitizer=address). Installs cargo-fuzz from crates.io when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
export RUSTC_BOOTSTRAP=1

targets=("${1:-}")
[[ -n "${targets[0]}" ]] || mapfile -t targets < <(cargo fuzz list)
seconds="${2:-${FUZZ_SECONDS:-30}}"

# One build first (every target, or the one asked for), so the timed runs below only fuzz.
if [[ -n "${1:-}" ]]; then cargo fuzz build "$1"; else cargo fuzz build; fi

# What the runs find beyond the seeds goes to a scratch directory (the first corpus
# directory is where libFuzzer writes), so the committed corpus stays the seeds.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
    echo "fuzz: $target for ${seconds}s"
    mkdir -p "$scratch/$target"
    # -timeout: an input taking 10 s is a hang in these parsers (they take microseconds).
    cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1
done
echo "fuzz: no finding in ${targets[*]} (${seconds}s each)"
