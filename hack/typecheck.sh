#!/usr/bin/env bash
# mypy over the package as Python imports it. operator/ and workloads/ are kubequant.operator and
# kubequant.workloads only through setup.py's mapping, which mypy cannot see, so the package is
# assembled from symlinks in a temporary folder and checked there (strict where pyproject says).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TREE="$(mktemp -d)"
trap 'rm -rf "${TREE}"' EXIT
mkdir -p "${TREE}/kubequant"
for entry in "${REPO}"/kubequant/*; do ln -s "${entry}" "${TREE}/kubequant/$(basename "${entry}")"; done
ln -s "${REPO}/operator" "${TREE}/kubequant/operator"
ln -s "${REPO}/workloads" "${TREE}/kubequant/workloads"
cp "${REPO}/pyproject.toml" "${TREE}/"
cd "${TREE}"
"${REPO}/.venv/bin/mypy" --cache-dir "${REPO}/.mypy_cache" "$@" | sed "s#${TREE}/##g"
exit "${PIPESTATUS[0]}"
