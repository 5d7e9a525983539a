#!/usr/bin/env bash
# The test runner behind `make test` (and CI): runs pytest against a real
# Kubernetes API server.
#
#   - KUBECONFIG set and its server answers: use that cluster, leave it alone.
#   - else a dev cluster of this checkout already up (make dev-cluster): use it, leave it up.
#   - else start one (hack/dev-cluster.sh up) and tear it down again on exit,
#     whatever happens.
# Either way it first builds the pinned binaries if they are not cached yet
# (hack/build-k8s.sh): the tests use its kubectl and helm.
#
# Usage: [KUBEQUANT_COVERAGE=0] hack/run-tests.sh [PYTEST ARGS...]
#   With no path among the arguments, runs every test under tests/; with one
#   (e.g. `hack/run-tests.sh tests/e2e -x`), only those.
# Exits with pytest's status, except that "no tests collected" (5) is a failure.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${HACK_DIR}/.." && pwd)"
cd "${REPO_ROOT}"

PYTHON="${REPO_ROOT}/.venv/bin/python"
PYTEST="${REPO_ROOT}/.venv/bin/pytest"
DEV_KUBECONFIG="${REPO_ROOT}/.dev-cluster/kubeconfig"

log() { printf '[run-tests %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

[[ -x "${PYTEST}" ]] || { log "ERROR: ${PYTEST} missing; run 'make venv' first"; exit 1; }

# Does the cluster of $KUBECONFIG answer? (the kubernetes client the tests use)
server_answers() {
  timeout 20 "${PYTHON}" - <<'EOF' >/dev/null 2>&1
from kubernetes import client, config

config.load_kube_config()
client.VersionApi().get_code(_request_timeout=10)
EOF
}

started_cluster=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
stop_cluster() {
  local rc=$?
  if ((started_cluster)); then
    log "tearing down the dev cluster this run started"
    "${HACK_DIR}/dev-cluster.sh" down || rc=1
  fi
  exit "${rc}"
}

main() {
  trap stop_cluster EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  # The tests run the pinned kubectl and helm whichever cluster they use
  # (a no-op once built; the first build takes ~12-14 min on 2 cores).
  "${HACK_DIR}/build-k8s.sh"

  if [[ -n "${KUBECONFIG:-}" ]] && server_answers; then
    log "using the cluster of KUBECONFIG=${KUBECONFIG}"
  elif KUBECONFIG="${DEV_KUBECONFIG}" server_answers; then
    export KUBECONFIG="${DEV_KUBECONFIG}"
    log "using the running dev cluster (KUBECONFIG=${KUBECONFIG}); leaving it up"
  else
    [[ -z "${KUBECONFIG:-}" ]] || log "KUBECONFIG=${KUBECONFIG} does not answer; starting a dev cluster instead"
    local start="${SECONDS}"
    started_cluster=1
    "${HACK_DIR}/dev-cluster.sh" up
    export KUBECONFIG="${DEV_KUBECONFIG}"
    log "dev cluster came up in $((SECONDS - start))s"
  fi

  # Paths among the arguments replace the default "tests".
  local arg have_path=0
  for arg in "$@"; do
    [[ "${arg}" != -* && -e "${arg%%::*}" ]] && have_path=1
  done
  local args=("$@")
  ((have_path)) || args=(tests "$@")
  # The slowest tests and fixtures, so a run that nears CI's time limit says where its time went.
  args+=(--durations=40 --durations-min=5)

  # Line and branch coverage of kubequant, operator and workloads, subprocesses included
  # (pyproject.toml [tool.coverage]); KUBEQUANT_COVERAGE=0 skips it.
  if [[ "${KUBEQUANT_COVERAGE:-1}" != 0 ]]; then
    export KUBEQUANT_COVERAGE_DIR="${REPO_ROOT}/build/coverage"
    rm -rf "${KUBEQUANT_COVERAGE_DIR}"
    mkdir -p "${KUBEQUANT_COVERAGE_DIR}"
    args+=(--cov --cov-report=)
  fi

  local rc=0
  "${PYTEST}" "${args[@]}" || rc=$?
  if ((rc == 5)); then
    log "ERROR: pytest collected no tests"
    rc=1
  fi
  if [[ "${KUBEQUANT_COVERAGE:-1}" != 0 ]]; then
    "${PYTHON}" "${HACK_DIR}/coverage_summary.py" || log "WARNING: no coverage summary"
  fi
  return "${rc}"
}

# One line, parsed before it runs: editing this file during a run cannot derail it.
main "$@"; exit $?
