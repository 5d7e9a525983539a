#!/usr/bin/env bash
# Build the local control-plane binaries ONCE into a cache outside the repo:
#
#   ${KUBEQUANT_CACHE_DIR:-$HOME/.cache/kubequant}/k8s/<KUBERNETES_VERSION>/bin/
#     kube-apiserver kube-controller-manager kube-scheduler kubectl   (k8s.io/kubernetes)
#     etcd                                                            (go.etcd.io/etcd/server/v3)
#     kwok kwokctl                                                    (sigs.k8s.io/kwok)
#     helm                                                            (helm.sh/helm/v3)
#     ray-operator                       (github.com/ray-project/kuberay/ray-operator)
#     promtool                           (github.com/prometheus/prometheus/cmd/promtool)
#     amtool                             (github.com/prometheus/alertmanager/cmd/amtool)
#     prometheus                         (github.com/prometheus/prometheus/cmd/prometheus)
#     toxiproxy-server                   (github.com/Shopify/toxiproxy/v2/cmd/server)
#   ${KUBEQUANT_CACHE_DIR:-$HOME/.cache/kubequant}/k8s/<KUBERNETES_VERSION>/kuberay/<KUBERAY_VERSION>/crds/
#     KubeRay's CRDs (ray.io_*.yaml), copied from the same module (config/crd/bases)
#   ${KUBEQUANT_CACHE_DIR:-$HOME/.cache/kubequant}/k8s/<KUBERNETES_VERSION>/prometheus-operator/<PROMETHEUS_OPERATOR_VERSION>/crds/
#     the Prometheus operator's CRDs (monitoring.coreos.com), copied from its Go module
#
# Everything is built from source through the Go module proxy (no release
# downloads), at the versions pinned in hack/versions.env. A binary that is
# already there at the pinned version is skipped; each one is built to a
# temporary name and moved into place, so an interrupted run leaves nothing
# half-written and re-running picks up where it stopped.
#
# Usage: hack/build-k8s.sh [--print-bin-dir] [COMPONENT...]
#   COMPONENT: kubernetes (= apiserver, controller-manager, scheduler, kubectl),
#              kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
#              etcd, kwok (= kwok + kwokctl), helm, kuberay (= ray-operator + its CRDs),
#              monitoring (= promtool + amtool + prometheus + the Prometheus operator's CRDs),
#              toxiproxy. Default: all;
#              kuberay and monitoring build in the background, alongside the others.
#   --print-kuberay-crd-dir: print where KubeRay's CRDs are (or will be) and exit.
#   --print-prometheus-operator-crd-dir: the same for the Prometheus operator's CRDs.
# Env: KUBEQUANT_CACHE_DIR, GOFLAGS (default -mod=mod), GOCACHE (default Go's).
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/versions.env
source "${HACK_DIR}/versions.env"

CACHE_DIR="${KUBEQUANT_CACHE_DIR:-${HOME}/.cache/kubequant}"
VERSION_DIR="${CACHE_DIR}/k8s/${KUBERNETES_VERSION}"
BIN_DIR="${VERSION_DIR}/bin"
# Records which version each binary was built at (etcd/kwok/helm are pinned
# independently of the Kubernetes version that names the directory).
STAMP_DIR="${BIN_DIR}/.built"

KUBERAY_CRD_DIR="${VERSION_DIR}/kuberay/${KUBERAY_VERSION}/crds"
PROMETHEUS_OPERATOR_CRD_DIR="${VERSION_DIR}/prometheus-operator/${PROMETHEUS_OPERATOR_VERSION}/crds"

if [[ "${1:-}" == "--print-bin-dir" ]]; then
  echo "${BIN_DIR}"
  exit 0
fi
if [[ "${1:-}" == "--print-kuberay-crd-dir" ]]; then
  echo "${KUBERAY_CRD_DIR}"
  exit 0
fi
if [[ "${1:-}" == "--print-prometheus-operator-crd-dir" ]]; then
  echo "${PROMETHEUS_OPERATOR_CRD_DIR}"
  exit 0
fi

log() { printf '[build-k8s %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v go >/dev/null || die "go is not on PATH (need Go >= 1.26 to build Kubernetes ${KUBERNETES_VERSION})"

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--mod=mod}"
# Never let a build "helpfully" pick up a go.work from the surroundings.
export GOWORK=off

mkdir -p "${BIN_DIR}" "${STAMP_DIR}"

# One build at a time per cache (dev-cluster.sh and run-tests.sh may race).
if command -v flock >/dev/null; then
  exec 9>"${VERSION_DIR}/.build.lock"
  if ! flock -n 9; then
    log "another build-k8s.sh holds ${VERSION_DIR}/.build.lock; waiting"
    flock 9
  fi
fi

WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/kubequant-build.XXXXXX")"
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  rm -rf "${WORK_DIR}"
  rm -f "${BIN_DIR}"/.tmp.* 2>/dev/null || true
}
trap cleanup EXIT

# is_built NAME VERSION: the binary exists and was built at VERSION.
is_built() {
  [[ -x "${BIN_DIR}/$1" && -f "${STAMP_DIR}/$1" && "$(cat "${STAMP_DIR}/$1")" == "$2" ]]
}

# install_bin SRC NAME VERSION: atomically move a freshly built binary in place.
install_bin() {
  local tmp="${BIN_DIR}/.tmp.$2.$$"
  cp "$1" "${tmp}" # cp first: SRC may be on another filesystem
  chmod 0755 "${tmp}"
  mv -f "${tmp}" "${BIN_DIR}/$2"
  echo "$3" >"${STAMP_DIR}/$2.tmp" && mv -f "${STAMP_DIR}/$2.tmp" "${STAMP_DIR}/$2"
}

TIMINGS=()
now() { date +%s; }
# Said once, before the first thing that is actually built.
announced=0
announce() {
  ((announced)) && return 0
  announced=1
  log "building into ${BIN_DIR} with $(go version) (-p $(nproc)), Go build cache $(go env GOCACHE)"
}
record() { # record NAME SECONDS
  TIMINGS+=("$(printf '%-24s %5ss' "$1" "$2")")
  log "built $1 in $2s"
}

# ---------------------------------------------------------------------------
# Kubernetes: k8s.io/kubernetes pins its staging modules (k8s.io/api, ...) at
# v0.0.0 with replaces to ./staging/src/...; those replaces do not apply when it
# is a dependency, so generate a module that replaces each of them with the
# published v0.<minor>.<patch> of the same release.
K8S_MOD_DIR=""
prepare_k8s_module() {
  [[ -n "${K8S_MOD_DIR}" ]] && return 0
  K8S_MOD_DIR="${WORK_DIR}/k8s"
  mkdir -p "${K8S_MOD_DIR}"
  local gomod staging_version
  log "resolving k8s.io/kubernetes@${KUBERNETES_VERSION}"
  gomod="$(cd "${K8S_MOD_DIR}" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
  [[ -f "${gomod}" ]] || die "could not download k8s.io/kubernetes@${KUBERNETES_VERSION}"
  staging_version="v0.${KUBERNETES_VERSION#v1.}"
  local -a staging
  mapfile -t staging < <(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "${gomod}")
  ((${#staging[@]} > 10)) || die "found only ${#staging[@]} staging modules in ${gomod}"
  {
    echo "module kubequant.local/k8s-build"
    echo
    sed -n 's/^go \(.*\)$/go \1/p' "${gomod}"
    grep '^godebug' "${gomod}" || true
    echo
    echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
    echo
    echo "replace ("
    local m
    for m in "${staging[@]}"; do
      echo "	${m} => ${m} ${staging_version}"
    done
    echo ")"
  } >"${K8S_MOD_DIR}/go.mod"
  log "generated module with ${#staging[@]} staging replaces at ${staging_version}"
}

k8s_ldflags() {
  local minor build_date pkg flags="-s -w"
  minor="${KUBERNETES_VERSION#v1.}"
  minor="${minor%%.*}"
  build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION}"
    flags+=" -X ${pkg}.gitMajor=1"
    flags+=" -X ${pkg}.gitMinor=${minor}"
    flags+=" -X ${pkg}.gitTreeState=clean"
    flags+=" -X ${pkg}.buildDate=${build_date}"
  done
  echo "${flags}"
}

build_k8s_cmd() { # build_k8s_cmd NAME
  local name="$1" start
  is_built "${name}" "${KUBERNETES_VERSION}" && return 0
  announce
  prepare_k8s_module
  log "building ${name} ${KUBERNETES_VERSION}"
  start="$(now)"
  (cd "${K8S_MOD_DIR}" && go build -trimpath -tags=selinux,notest \
    -ldflags "$(k8s_ldflags)" -o "${WORK_DIR}/${name}" "k8s.io/kubernetes/cmd/${name}")
  install_bin "${WORK_DIR}/${name}" "${name}" "${KUBERNETES_VERSION}"
  record "${name}" "$(($(now) - start))"
}

# ---------------------------------------------------------------------------
# etcd: its release modules replace their siblings with ../ paths, so neither
# `go install ...@version` nor depending on go.etcd.io/etcd/v3 works; the server
# module itself requires its siblings at the same version, so a three-line main
# calling etcdmain.Main is enough.
build_etcd() {
  local start dir="${WORK_DIR}/etcd"
  is_built etcd "${ETCD_VERSION}" && return 0
  announce
  log "building etcd ${ETCD_VERSION}"
  start="$(now)"
  mkdir -p "${dir}"
  cat >"${dir}/go.mod" <<EOF
module kubequant.local/etcd-build

go 1.26.0

require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}
EOF
  cat >"${dir}/main.go" <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  (cd "${dir}" && go mod tidy && go build -trimpath -ldflags "-s -w" -o "${WORK_DIR}/etcd-bin" .)
  install_bin "${WORK_DIR}/etcd-bin" etcd "${ETCD_VERSION}"
  record etcd "$(($(now) - start))"
}

# kwok and helm have no replace directives: `go install pkg@version` builds them as released.
build_kwok() {
  local start gobin="${WORK_DIR}/gobin-kwok"
  is_built kwok "${KWOK_VERSION}" && is_built kwokctl "${KWOK_VERSION}" && return 0
  announce
  log "building kwok + kwokctl ${KWOK_VERSION}"
  start="$(now)"
  local v="${KWOK_VERSION#v}"
  GOBIN="${gobin}" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBERNETES_VERSION#v}" \
    "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" "sigs.k8s.io/kwok/cmd/kwokctl@${KWOK_VERSION}"
  install_bin "${gobin}/kwok" kwok "${KWOK_VERSION}"
  install_bin "${gobin}/kwokctl" kwokctl "${KWOK_VERSION}"
  record "kwok+kwokctl" "$(($(now) - start))"
}

build_helm() {
  local start gobin="${WORK_DIR}/gobin-helm"
  is_built helm "${HELM_VERSION}" && return 0
  announce
  log "building helm ${HELM_VERSION}"
  start="$(now)"
  GOBIN="${gobin}" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  install_bin "${gobin}/helm" helm "${HELM_VERSION}"
  record helm "$(($(now) - start))"
}

# KubeRay's ray-operator: its go.mod has no replace directives, so `go install pkg@version` builds it
# as released (v1.6.2 with Go 1.26; the proxy refused v1.7.0's zip when tried). Its CRDs come from
# the same module, so the binary and the CRDs it serves can never be of two versions.
build_kuberay() {
  local start gobin="${WORK_DIR}/gobin-kuberay" dir tmp
  is_built ray-operator "${KUBERAY_VERSION}" && [[ -f "${KUBERAY_CRD_DIR}/.complete" ]] && return 0
  announce
  log "building ray-operator ${KUBERAY_VERSION}"
  start="$(now)"
  GOBIN="${gobin}" go install -trimpath -ldflags "-s -w" \
    "github.com/ray-project/kuberay/ray-operator@${KUBERAY_VERSION}"
  dir="$(cd "${WORK_DIR}" && go mod download -json "github.com/ray-project/kuberay/ray-operator@${KUBERAY_VERSION}" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
  [[ -d "${dir}/config/crd/bases" ]] || die "no config/crd/bases in ray-operator@${KUBERAY_VERSION} (${dir})"
  tmp="${KUBERAY_CRD_DIR}.tmp.$$"
  rm -rf "${tmp}" && mkdir -p "${tmp}"
  cp "${dir}"/config/crd/bases/ray.io_*.yaml "${tmp}/"
  chmod 0644 "${tmp}"/*.yaml
  touch "${tmp}/.complete"
  rm -rf "${KUBERAY_CRD_DIR}" && mv "${tmp}" "${KUBERAY_CRD_DIR}"
  install_bin "${gobin}/ray-operator" ray-operator "${KUBERAY_VERSION}"
  record "ray-operator+crds" "$(($(now) - start))"
}

# promtool and amtool: Prometheus's and Alertmanager's go.mod carry exclude/replace directives, which
# `go install pkg@version` refuses, so (like etcd) build the command from a generated module that
# requires the release. The Prometheus operator's CRDs are copied from its root module
# (example/prometheus-operator-crd), so tests install the CRDs of one pinned release.
build_go_cmd() { # build_go_cmd NAME MODULE VERSION PACKAGE [VERSION_VARIABLE]
  local name="$1" module="$2" version="$3" pkg="$4" dir="${WORK_DIR}/$1" start
  # The variable that holds the version (default: Prometheus's), stamped with the pinned release.
  local version_var="${5:-github.com/prometheus/common/version.Version}"
  is_built "${name}" "${version}" && return 0
  announce
  log "building ${name} ${version}"
  start="$(now)"
  mkdir -p "${dir}"
  printf 'module kubequant.local/%s-build\n\ngo 1.26.0\n\nrequire %s %s\n' "${name}" "${module}" "${version}" >"${dir}/go.mod"
  printf 'package tools\n\nimport _ "%s"\n' "${pkg}" >"${dir}/tools.go"
  (cd "${dir}" && go mod tidy && go build -trimpath \
    -ldflags "-s -w -X ${version_var}=${version#v} -X github.com/prometheus/common/version.Branch=release" \
    -o "${WORK_DIR}/${name}-bin" "${pkg}")
  install_bin "${WORK_DIR}/${name}-bin" "${name}" "${version}"
  record "${name}" "$(($(now) - start))"
}

build_prometheus_operator_crds() {
  local dir tmp module="github.com/prometheus-operator/prometheus-operator"
  [[ -f "${PROMETHEUS_OPERATOR_CRD_DIR}/.complete" ]] && return 0
  log "fetching the Prometheus operator's CRDs ${PROMETHEUS_OPERATOR_VERSION}"
  mkdir -p "${WORK_DIR}/po"
  # `|| true`: a refused version must reach the die below with its name, not end the script silently.
  dir="$( (cd "${WORK_DIR}/po" && GOFLAGS=-mod=mod go mod download -json "${module}@${PROMETHEUS_OPERATOR_VERSION}" || true) |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
  [[ -d "${dir}/example/prometheus-operator-crd" ]] || die "no example/prometheus-operator-crd in ${module}@${PROMETHEUS_OPERATOR_VERSION} (${dir})"
  tmp="${PROMETHEUS_OPERATOR_CRD_DIR}.tmp.$$"
  rm -rf "${tmp}" && mkdir -p "${tmp}"
  cp "${dir}"/example/prometheus-operator-crd/monitoring.coreos.com_*.yaml "${tmp}/"
  chmod 0644 "${tmp}"/*.yaml
  touch "${tmp}/.complete"
  rm -rf "${PROMETHEUS_OPERATOR_CRD_DIR}" && mv "${tmp}" "${PROMETHEUS_OPERATOR_CRD_DIR}"
}

# Cold, on 2 shared cores (2026-12-02, load average ~15): amtool 200s, promtool 1390s, then
# prometheus 322s on promtool's build cache. prometheus is built without the `builtinassets` tag:
# its API (what the tests use) works, its web UI does not.
build_monitoring() {
  build_prometheus_operator_crds
  build_go_cmd amtool github.com/prometheus/alertmanager "${ALERTMANAGER_VERSION}" github.com/prometheus/alertmanager/cmd/amtool
  build_go_cmd promtool github.com/prometheus/prometheus "${PROMETHEUS_VERSION}" github.com/prometheus/prometheus/cmd/promtool
  build_go_cmd prometheus github.com/prometheus/prometheus "${PROMETHEUS_VERSION}" github.com/prometheus/prometheus/cmd/prometheus
}

# Toxiproxy's server, the TCP fault proxy of the broker-fault tests. Its go.mod has no replace
# directives, but building it like promtool keeps one way of building a pinned command.
build_toxiproxy() {
  build_go_cmd toxiproxy-server github.com/Shopify/toxiproxy/v2 "${TOXIPROXY_VERSION}" github.com/Shopify/toxiproxy/v2/cmd/server \
    github.com/Shopify/toxiproxy/v2.Version
}

# ---------------------------------------------------------------------------
main() {
  local components=("$@") c n total_start kuberay_pid="" monitoring_pid=""
  ((${#components[@]})) || components=(kuberay monitoring kubernetes etcd kwok helm toxiproxy)
  total_start="$(now)"
  for c in "${components[@]}"; do
    # KubeRay shares no packages with the others' big builds: build it alongside them, its
    # timing reported through a file (a background subshell cannot append to TIMINGS).
    if [[ "${c}" == kuberay && ${#components[@]} -gt 1 ]]; then
      (
        TIMINGS=()
        build_kuberay # set -e holds in the subshell: a failed step ends it with that status
        if ((${#TIMINGS[@]})); then printf '%s\n' "${TIMINGS[@]}" >"${WORK_DIR}/kuberay.timing"; fi
      ) &
      kuberay_pid=$!
      continue
    fi
    if [[ "${c}" == monitoring && ${#components[@]} -gt 1 ]]; then
      (
        TIMINGS=()
        build_monitoring
        if ((${#TIMINGS[@]})); then printf '%s\n' "${TIMINGS[@]}" >"${WORK_DIR}/monitoring.timing"; fi
      ) &
      monitoring_pid=$!
      continue
    fi
    case "${c}" in
      kubernetes)
        # apiserver first: it pulls in most of the tree, the rest reuse the build cache.
        for n in kube-apiserver kube-controller-manager kube-scheduler kubectl; do build_k8s_cmd "${n}"; done
        ;;
      kube-apiserver | kube-controller-manager | kube-scheduler | kubectl) build_k8s_cmd "${c}" ;;
      etcd) build_etcd ;;
      kwok | kwokctl) build_kwok ;;
      helm) build_helm ;;
      kuberay | ray-operator) build_kuberay ;;
      monitoring | promtool | amtool | prometheus) build_monitoring ;;
      toxiproxy | toxiproxy-server) build_toxiproxy ;;
      *) die "unknown component '${c}'" ;;
    esac
  done
  if [[ -n "${kuberay_pid}" ]]; then
    wait "${kuberay_pid}" || die "building ray-operator ${KUBERAY_VERSION} failed (see above)"
    [[ -s "${WORK_DIR}/kuberay.timing" ]] && mapfile -t -O "${#TIMINGS[@]}" TIMINGS <"${WORK_DIR}/kuberay.timing"
  fi
  if [[ -n "${monitoring_pid}" ]]; then
    wait "${monitoring_pid}" || die "building promtool/amtool failed (see above)"
    [[ -s "${WORK_DIR}/monitoring.timing" ]] && mapfile -t -O "${#TIMINGS[@]}" TIMINGS <"${WORK_DIR}/monitoring.timing"
  fi

  if ((${#TIMINGS[@]})); then
    log "build times (each on top of the previous ones' Go build cache):"
    printf '  %s\n' "${TIMINGS[@]}" >&2
    log "total: $(($(now) - total_start))s; binaries in ${BIN_DIR}"
  else
    log "${components[*]}: already built in ${BIN_DIR}"
  fi
}

# One line, parsed before it runs: editing this file during a build cannot derail it.
main "$@"; exit $?
