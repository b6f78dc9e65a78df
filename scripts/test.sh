#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need into the git-ignored .tools/
# first (scripts/tools.sh: valkey-server, grpcurl and the gateways). Extra arguments go to `cargo test`
# (bare words: test-name filters); `scripts/test.sh typescript` runs only the TypeScript
# client's suite (clients/typescript, with Node.js and npm).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/tools.sh
export PATH="$PWD/.tools/bin:$PATH"

# The README's own `cargo run` commands are run by a test (tests/docs/readme.rs); build the
# service the way `cargo run` does first (without the tests' dev-dependency features), so
# that test does not compile in the middle of timing-sensitive ones. The same for the load
# tool (tools/session-bench, a package of its own), which tests/it/bench_tool.rs builds
# with this very command before it runs it.
cargo build --locked --bin barazo-session
cargo build --locked --package session-bench --bin session-bench

# The TypeScript client (clients/typescript) against that binary and a real Valkey: its
# dependencies from the npm registry (lockfile as committed), the generated code checked
# against proto/, the build, then `node --test`. Run without filters, or alone with
# `typescript`.
typescript_client() {
  (
    cd clients/typescript
    # --prefer-offline: packages already in the npm cache are not fetched again (the lockfile's
    # integrity hashes are checked either way).
    npm ci --prefer-offline --no-audit --no-fund
    npm run check-generated
    npm run build
    npm test
  )
}
if [ $# -eq 0 ]; then
  typescript_client
elif [ "$*" = typescript ]; then
  typescript_client
  exit 0
fi

# Bare words are test-name filters, any number of them (`scripts/test.sh deploy dashboard`;
# cargo test itself takes one); with any flag, the arguments go to cargo test as they are.
if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -q '^-'; then
  set -- -- "$@"
fi
# Every package of the workspace: the service's tests and the load tool's own.
cargo test --locked --workspace "$@"
