#!/usr/bin/env bash
# Fetch Argo CD's CRDs (Application, ApplicationSet, AppProject: argoproj.io) ONCE into a cache
# outside the repo, from Argo CD's Go module at ARGOCD_VERSION (hack/versions.env):
#
#   ${KUBEQUANT_CACHE_DIR:-$HOME/.cache/kubequant}/argocd/<ARGOCD_VERSION>/
#     application-crd.yaml applicationset-crd.yaml appproject-crd.yaml   (the module's manifests/crds/)
#
# Through the Go module proxy like every other pinned tool (hack/build-k8s.sh): no release download.
# The module's go.mod may ask for a newer Go than the one here; `go mod download` then still fetches
# and verifies the zip against the checksum database (its .ziphash) but does not extract it, so the
# CRDs are read from the verified zip. tests/e2e/test_gitops_examples.py installs them and validates
# examples/gitops against them.
#
# Usage: hack/fetch-argocd-crds.sh [--print-dir]
#   --print-dir: print where the CRDs are (or will be) and exit.
# Env: KUBEQUANT_CACHE_DIR, GOFLAGS (default -mod=mod).
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/versions.env
source "${HACK_DIR}/versions.env"

MODULE="github.com/argoproj/argo-cd/v3"
CRDS=(application-crd.yaml applicationset-crd.yaml appproject-crd.yaml)
CACHE_DIR="${KUBEQUANT_CACHE_DIR:-${HOME}/.cache/kubequant}"
OUT_DIR="${CACHE_DIR}/argocd/${ARGOCD_VERSION}"

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "${OUT_DIR}"
  exit 0
fi

log() { printf '[fetch-argocd-crds %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ -f "${OUT_DIR}/.complete" ]]; then
  log "Argo CD ${ARGOCD_VERSION} CRDs are in ${OUT_DIR}"
  exit 0
fi
command -v go >/dev/null || die "go is not on PATH (the CRDs come from the Go module ${MODULE})"
command -v python3 >/dev/null || die "python3 is not on PATH (it reads the module's zip)"

export GOFLAGS="${GOFLAGS:--mod=mod}" GOWORK=off
WORK_DIR="$(mktemp -d)"
trap 'rm -rf "${WORK_DIR}"' EXIT

log "fetching ${MODULE}@${ARGOCD_VERSION} from the Go module proxy"
# `|| true`: a module that needs a newer Go reports an Error but is downloaded; judged below.
(cd "${WORK_DIR}" && go mod download -json "${MODULE}@${ARGOCD_VERSION}" >"${WORK_DIR}/download.json" || true)
field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" "${WORK_DIR}/download.json"; }
dir="$(field Dir)"
zip="$(field Zip)"
sum="$(field Sum)"

tmp="${OUT_DIR}.tmp.$$"
rm -rf "${tmp}" && mkdir -p "${tmp}"
if [[ -n "${dir}" && -d "${dir}/manifests/crds" ]]; then
  for crd in "${CRDS[@]}"; do cp "${dir}/manifests/crds/${crd}" "${tmp}/"; done
elif [[ -n "${zip}" && -f "${zip}" && -n "${sum}" && "$(cat "${zip%.zip}.ziphash" 2>/dev/null)" == "${sum}" ]]; then
  python3 - "${zip}" "${MODULE}@${ARGOCD_VERSION}/manifests/crds" "${tmp}" "${CRDS[@]}" <<'PY' ||
import sys, zipfile
from pathlib import Path
archive, folder, out, names = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
with zipfile.ZipFile(archive) as zf:
    for name in names:
        (out / name).write_bytes(zf.read(f"{folder}/{name}"))
PY
    die "the CRDs are not in ${zip} under manifests/crds/"
else
  rm -rf "${tmp}"
  die "the Go module proxy did not give ${MODULE}@${ARGOCD_VERSION}: $(cat "${WORK_DIR}/download.json")"
fi
chmod 0644 "${tmp}"/*.yaml
echo "${MODULE}@${ARGOCD_VERSION} ${sum}" >"${tmp}/SOURCE"
touch "${tmp}/.complete"
rm -rf "${OUT_DIR}" && mkdir -p "$(dirname "${OUT_DIR}")" && mv "${tmp}" "${OUT_DIR}"
log "Argo CD ${ARGOCD_VERSION} CRDs are in ${OUT_DIR}"
