#!/usr/bin/env bash
# lint-imports (import-linter, contracts in .importlinter) over the package as Python imports it.
# operator/ and workloads/ are kubequant.operator and kubequant.workloads only through setup.py's
# mapping, so the package is assembled from symlinks in a temporary folder, as hack/typecheck.sh does.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TREE="$(mktemp -d)"
trap 'rm -rf "${TREE}"' EXIT
mkdir -p "${TREE}/kubequant"
for entry in "${REPO}"/kubequant/*; do ln -s "${entry}" "${TREE}/kubequant/$(basename "${entry}")"; done
ln -s "${REPO}/operator" "${TREE}/kubequant/operator"
ln -s "${REPO}/workloads" "${TREE}/kubequant/workloads"
cp "${REPO}/.importlinter" "${TREE}/"
cd "${TREE}"
PYTHONPATH="${TREE}" "${REPO}/.venv/bin/lint-imports" --no-cache "$@"
