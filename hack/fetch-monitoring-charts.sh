#!/usr/bin/env bash
# Fetch kube-prometheus-stack and the charts it depends on ONCE into a cache outside the repo, for
# monitoring mode (b) (manifests/monitoring/standalone), from the Go module proxy like every other
# pinned tool (hack/versions.env): the proxy serves the chart repositories' git trees as modules.
#
#   ${KUBEQUANT_CACHE_DIR:-$HOME/.cache/kubequant}/charts/kube-prometheus-stack-<KUBE_PROMETHEUS_STACK_VERSION>/
#     kube-prometheus-stack/            the chart, with its dependencies unpacked under charts/
#                                       (crds, kube-state-metrics, prometheus-node-exporter,
#                                       prometheus-windows-exporter, grafana): what `helm dependency
#                                       build` would put there from the chart repositories
#     SOURCE                            the modules, versions and checksums it came from
#
# Each dependency's version is checked against the one kube-prometheus-stack's Chart.yaml asks for;
# a difference is printed and recorded in SOURCE (grafana: see hack/versions.env), never hidden.
# tests/e2e/test_monitoring_standalone.py lints, renders and installs the standalone chart with it.
#
# Usage: hack/fetch-monitoring-charts.sh [--print-dir]
#   --print-dir: print where the chart is (or will be) and exit.
# Env: KUBEQUANT_CACHE_DIR, GOFLAGS (default -mod=mod).
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/versions.env
source "${HACK_DIR}/versions.env"

PROMETHEUS_MODULE="github.com/prometheus-community/helm-charts"
GRAFANA_MODULE="github.com/grafana-community/helm-charts"
CACHE_DIR="${KUBEQUANT_CACHE_DIR:-${HOME}/.cache/kubequant}"
OUT_DIR="${CACHE_DIR}/charts/kube-prometheus-stack-${KUBE_PROMETHEUS_STACK_VERSION}"

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "${OUT_DIR}"
  exit 0
fi

log() { printf '[fetch-monitoring-charts %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ -f "${OUT_DIR}/.complete" ]]; then
  log "kube-prometheus-stack ${KUBE_PROMETHEUS_STACK_VERSION} is in ${OUT_DIR}"
  exit 0
fi
command -v go >/dev/null || die "go is not on PATH (the charts come from the Go module proxy)"

export GOFLAGS="${GOFLAGS:--mod=mod}" GOWORK=off
WORK_DIR="$(mktemp -d)"
tmp="${OUT_DIR}.tmp.$$"
trap 'rm -rf "${WORK_DIR}" "${tmp}"' EXIT

# The module's unpacked folder (read-only, in Go's module cache), or die with the proxy's answer.
module_dir() {
  local module="$1" version="$2" answer
  log "fetching ${module}@${version} from the Go module proxy"
  answer="$(cd "${WORK_DIR}" && go mod download -json "${module}@${version}" 2>&1 || true)"
  local dir
  dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"${answer}")"
  [[ -n "${dir}" && -d "${dir}/charts" ]] || die "the Go module proxy did not give ${module}@${version}: ${answer}"
  printf '%s %s %s\n' "${module}@${version}" \
    "$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",\{0,1\}$/\1/p' <<<"${answer}")" "${dir}" >>"${WORK_DIR}/sources"
  echo "${dir}"
}

# A chart's `version:` (the top-level key of its Chart.yaml).
chart_version() { sed -n 's/^version:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' "$1/Chart.yaml"; }

# The version kube-prometheus-stack's Chart.yaml asks of dependency $1.
wanted_version() {
  awk -v name="$1" '
    /^dependencies:/ { deps = 1; next }
    deps && /^[^ -]/ { deps = 0 }
    deps && $1 == "-" && $2 == "name:" { current = $3 }
    deps && $1 == "name:" { current = $2 }
    deps && $1 == "version:" && current == name { gsub(/"/, "", $2); print $2; exit }
  ' "$2/Chart.yaml"
}

prometheus_dir="$(module_dir "${PROMETHEUS_MODULE}" "${PROMETHEUS_COMMUNITY_CHARTS_MODULE_VERSION}")"
grafana_dir="$(module_dir "${GRAFANA_MODULE}" "${GRAFANA_COMMUNITY_CHARTS_MODULE_VERSION}")"

stack="${prometheus_dir}/charts/kube-prometheus-stack"
[[ "$(chart_version "${stack}")" == "${KUBE_PROMETHEUS_STACK_VERSION}" ]] ||
  die "${PROMETHEUS_MODULE}@${PROMETHEUS_COMMUNITY_CHARTS_MODULE_VERSION} has kube-prometheus-stack $(chart_version "${stack}"), not ${KUBE_PROMETHEUS_STACK_VERSION}: fix hack/versions.env"

rm -rf "${tmp}" && mkdir -p "${tmp}"
cp -R "${stack}" "${tmp}/kube-prometheus-stack"
chmod -R u+w "${tmp}"
notes=()
for dep in kube-state-metrics prometheus-node-exporter prometheus-windows-exporter grafana; do
  src="${prometheus_dir}/charts/${dep}"
  [[ "${dep}" == grafana ]] && src="${grafana_dir}/charts/${dep}"
  [[ -f "${src}/Chart.yaml" ]] || die "${dep} is not in ${src%/charts/*}"
  cp -R "${src}" "${tmp}/kube-prometheus-stack/charts/${dep}"
  have="$(chart_version "${src}")" want="$(wanted_version "${dep}" "${stack}")"
  # A `0.12.*` constraint is met by any 0.12 patch.
  if [[ "${have}" != "${want}" && ! ( "${want}" == *'*' && "${have}" == "${want%\*}"* ) ]]; then
    notes+=("${dep}: kube-prometheus-stack asks for ${want}; ${have} is the version the Go module proxy serves")
    log "NOTE: ${notes[-1]}"
  fi
done
chmod -R u+w "${tmp}"
{
  cat "${WORK_DIR}/sources" | cut -d' ' -f1,2
  for note in "${notes[@]}"; do echo "note: ${note}"; done
} >"${tmp}/SOURCE"
touch "${tmp}/.complete"
rm -rf "${OUT_DIR}" && mkdir -p "$(dirname "${OUT_DIR}")" && mv "${tmp}" "${OUT_DIR}"
log "kube-prometheus-stack ${KUBE_PROMETHEUS_STACK_VERSION} is in ${OUT_DIR}"
