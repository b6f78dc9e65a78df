#!/usr/bin/env bash
# Fails when src/gen/ is not what `npm run generate` makes from ../../proto now: the
# generated code is committed, so a proto change without regenerating must not pass.
set -euo pipefail
cd "$(dirname "$0")/.."
npm run --silent generate
untracked=$(git ls-files --others --exclude-standard -- src/gen)
if ! git diff --exit-code --stat -- src/gen || [ -n "$untracked" ]; then
  echo "src/gen is stale: run 'npm run generate' in clients/typescript and commit the result" >&2
  [ -z "$untracked" ] || echo "new files: $untracked" >&2
  exit 1
fi
