#!/usr/bin/env bash
# A local Kubernetes control plane for development and e2e tests.
#
#   hack/dev-cluster.sh up       build binaries if needed, start the cluster, add the
#                                fake nodes of hack/nodes.yaml; no-op if already up
#   hack/dev-cluster.sh down     stop every process of the cluster, remove .dev-cluster/
#   hack/dev-cluster.sh status   exit 0 and describe the cluster if it answers, else exit 1
#
# The cluster is real Kubernetes (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler at the versions of hack/versions.env, built from source by
# hack/build-k8s.sh) run as local processes by `kwokctl --runtime binary`; the
# worker nodes are simulated by kwok's controller. The API server serves HTTPS
# with client certificates, authorization Node,RBAC and the default admission
# plugins (PodSecurity included) plus NodeRestriction.
#
# KubeRay runs for real: its CRDs (ray.io/v1, from the KUBERAY_VERSION module, installed with
# server-side apply: they are too big for kubectl's client-side last-applied annotation) and its
# ray-operator binary as a local process against the cluster, restarted by `up` when found dead
# (like kwok's controller) and stopped by `down`. RayClusters' pods land on the fake nodes; with
# no pod network no Ray job really runs there.
#
# Everything the cluster writes lives in <repo>/.dev-cluster/ (git-ignored):
#   kubeconfig         self-contained admin kubeconfig (export KUBECONFIG=... to use it)
#   kwok/              kwokctl's workdir: pki, etcd data, logs, pid files
#   ray-operator.log   KubeRay's operator's log; ray-operator.pid its process
#
# On a loaded machine the API server can take minutes to become ready, and kwok's
# controller gives up after ~30 s of "connection refused" (kwok's waitForReady) while
# kwokctl still reports the cluster ready. So `up` waits for the API server's /readyz
# itself (KUBEQUANT_DEV_CLUSTER_TIMEOUT), then checks that kwok's controller is alive
# before the nodes need it, restarting it (`kwokctl start cluster` starts only the
# components that are down) whenever it finds it dead until the nodes are Ready.
#
# Env: KUBEQUANT_CACHE_DIR (binary cache, see build-k8s.sh),
#      KUBEQUANT_DEV_CLUSTER_RUNTIME=kwok (default) | kind (needs docker + kind; untested here)
#      KUBEQUANT_DEV_CLUSTER_NAME (default kubequant-dev), KUBEQUANT_DEV_CLUSTER_DIR (default
#        <repo>/.dev-cluster): a second, separate cluster (kwokctl picks free ports)
#      KUBEQUANT_DEV_CLUSTER_TIMEOUT: seconds to wait for /readyz and for Ready nodes (300)
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${HACK_DIR}/.." && pwd)"
# shellcheck source=hack/versions.env
source "${HACK_DIR}/versions.env"

CLUSTER_NAME="${KUBEQUANT_DEV_CLUSTER_NAME:-kubequant-dev}"
STATE_DIR="${KUBEQUANT_DEV_CLUSTER_DIR:-${REPO_ROOT}/.dev-cluster}"
READY_TIMEOUT="${KUBEQUANT_DEV_CLUSTER_TIMEOUT:-300}"
# How often a dead kwok controller is restarted before `up` gives up.
KWOK_RESTARTS=5
KUBECONFIG_OUT="${STATE_DIR}/kubeconfig"
KWOKCTL_KUBECONFIG="${STATE_DIR}/kwokctl-kubeconfig"
KWOKCTL_CONFIG="${STATE_DIR}/kwokctl.yaml"
RUNTIME_FILE="${STATE_DIR}/runtime"
NODES_MANIFEST="${HACK_DIR}/nodes.yaml"
# kwokctl keeps each cluster under $KWOK_WORKDIR/clusters/<name>; keep it in the
# repo so that two checkouts on one machine never share or clobber a cluster.
export KWOK_WORKDIR="${STATE_DIR}/kwok"
BIN_DIR="$("${HACK_DIR}/build-k8s.sh" --print-bin-dir)"
KUBERAY_CRD_DIR="$("${HACK_DIR}/build-k8s.sh" --print-kuberay-crd-dir)"
RAY_OPERATOR_PID="${STATE_DIR}/ray-operator.pid"
RAY_OPERATOR_LOG="${STATE_DIR}/ray-operator.log"
# How often a dead ray-operator is restarted by one `up` before it gives up.
RAY_OPERATOR_RESTARTS=3

log() { printf '[dev-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

kubectl_() { "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_OUT}" "$@"; }

# The cluster answers on its kubeconfig.
is_up() {
  [[ -f "${KUBECONFIG_OUT}" && -x "${BIN_DIR}/kubectl" ]] &&
    kubectl_ --request-timeout=5s get --raw /readyz >/dev/null 2>&1
}

# PIDs of processes running one of this checkout's cluster binaries: kwokctl starts
# them through symlinks in its workdir, so their command lines start with that path.
cluster_pids() { pgrep -f -- "^${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}/bin/" || true; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what="$2"
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "timed out waiting for ${what}"; return 1; }
    sleep 0.5
  done
}

# shellcheck disable=SC2317  # called through wait_for
default_sa_exists() { kubectl_ -n default get serviceaccount default; }

# kwokctl logs JSON when not on a terminal: shorten its INFO lines to their message.
kwokctl_() {
  # 8>&-: the cluster's processes must not inherit the lock (see lock()).
  "${BIN_DIR}/kwokctl" "$@" 8>&- 2>&1 | sed -E '/^\{.*"level":"INFO"/ s/^.*"msg":"([^"]*)".*$/  kwokctl: \1/' >&2
}

# --------------------------------------------------------------------------- kwok
up_kwok() {
  local bin="${BIN_DIR}"
  log "starting ${CLUSTER_NAME}: $("${bin}/kwokctl" --version 2>/dev/null | head -1 || true), runtime binary"
  rm -f "${KWOKCTL_KUBECONFIG}"
  # Options with no command-line flag. bindAddress: kwokctl's default is 0.0.0.0,
  # which would put an unauthenticated etcd on every interface of the machine.
  cat >"${KWOKCTL_CONFIG}" <<'EOF' || return 1
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  bindAddress: 127.0.0.1
EOF
  # --secure-port/--kube-authorization/--kube-admission are kwokctl's defaults for
  # Kubernetes >= 1.13; spelled out because they are what makes this a real cluster:
  # TLS + client certs, --authorization-mode=Node,RBAC, the default admission chain.
  # Ports are left to kwokctl, which picks free ones.
  # kwokctl has no flag for these two; it reads KWOK_<NAME> for every option. It
  # also runs `kubectl` from PATH to probe the cluster: make that the pinned one.
  PATH="${bin}:${PATH}" KWOK_KUBE_VERSION="${KUBERNETES_VERSION}" KWOK_KUBECTL_BINARY="${bin}/kubectl" \
    kwokctl_ --config "${KWOKCTL_CONFIG}" create cluster \
    --name "${CLUSTER_NAME}" \
    --runtime binary \
    --etcd-binary "${bin}/etcd" \
    --kube-apiserver-binary "${bin}/kube-apiserver" \
    --kube-controller-manager-binary "${bin}/kube-controller-manager" \
    --kube-scheduler-binary "${bin}/kube-scheduler" \
    --kwok-controller-binary "${bin}/kwok" \
    --secure-port=true \
    --kube-authorization=true \
    --kube-admission=true \
    --extra-args "kube-apiserver=enable-admission-plugins=NodeRestriction" \
    --extra-args "kwok-controller=manage-all-nodes=false" \
    --extra-args "kwok-controller=manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake" \
    --kubeconfig "${KWOKCTL_KUBECONFIG}" \
    --timeout 4m \
    --wait 1m \
    --quiet-pull || return 1
  # A self-contained copy (certificates inlined) that outlives kwokctl's file layout.
  # (Explicit `|| return`: this function runs under `||`, where `set -e` is off.)
  "${bin}/kubectl" --kubeconfig "${KWOKCTL_KUBECONFIG}" config view \
    --raw --flatten --minify --context "kwok-${CLUSTER_NAME}" >"${KUBECONFIG_OUT}.tmp" || return 1
  chmod 0600 "${KUBECONFIG_OUT}.tmp" && mv -f "${KUBECONFIG_OUT}.tmp" "${KUBECONFIG_OUT}" || return 1
  # kwokctl logs a failed readiness wait but still exits 0: check for ourselves.
  log "waiting for the API server's /readyz (up to ${READY_TIMEOUT}s)"
  wait_for "${READY_TIMEOUT}" "the API server's /readyz" is_up || return 1
  # kwok's controller may have given up while the API server was starting: it must be
  # up before the nodes are added, or nothing ever marks them Ready.
  ensure_kwok || return 1
}

# kwok's controller, as kwokctl started it (its pid file), is running.
kwok_alive() {
  local pid_file="${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}/pids/kwok-controller.pid"
  [[ -f "${pid_file}" ]] && [[ -n "$(alive "$(cat "${pid_file}")")" ]]
}

# Restart kwok's controller if it is not running (at most KWOK_RESTARTS times per `up`).
kwok_restarts=0
ensure_kwok() {
  kwok_alive && return 0
  local log_file="${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}/logs/kwok-controller.log"
  if ((kwok_restarts >= KWOK_RESTARTS)); then
    log "kwok's controller died ${kwok_restarts} times; giving up. Its log: ${log_file}"
    return 1
  fi
  kwok_restarts=$((kwok_restarts + 1))
  log "kwok's controller is not running (restart ${kwok_restarts}/${KWOK_RESTARTS}); its last words:"
  tail -n 3 "${log_file}" 2>/dev/null | cut -c1-300 | sed 's/^/    /' >&2 || true
  # kwokctl counts a process as running while kill -0 reaches it, a zombie included (the dead
  # controller stays one until kwokctl create, its parent, exits and init reaps it): without
  # its pid file kwokctl starts it anew. `start cluster` starts only the components that are
  # down, then waits until the API server answers.
  rm -f "${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}/pids/kwok-controller.pid"
  PATH="${BIN_DIR}:${PATH}" KWOK_KUBECTL_BINARY="${BIN_DIR}/kubectl" \
    kwokctl_ start cluster --name "${CLUSTER_NAME}" || return 1
  wait_for 10 "kwok's controller to start" kwok_alive
}

# Nodes Ready, restarting kwok's controller whenever it is found dead meanwhile.
wait_nodes_ready() {
  local deadline=$((SECONDS + $1))
  while ! kubectl_ wait --for=condition=Ready nodes -l kubequant.io/pool --timeout=5s >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "timed out waiting for Ready nodes"; kubectl_ get nodes >&2 || true; return 1; }
    ensure_kwok || return 1
    sleep 1
  done
}

# Those of the given PIDs that are still running (a zombie has exited: it only
# waits for its new parent to reap it).
alive() {
  local pid
  for pid in "$@"; do
    [[ "$(ps -o stat= -p "${pid}" 2>/dev/null)" =~ ^[^Z] ]] && echo "${pid}"
  done
  return 0
}

# wait_exit SECONDS PID...: true once none of the PIDs is running.
wait_exit() {
  local deadline=$((SECONDS + $1))
  shift
  while [[ -n "$(alive "$@")" ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.25
  done
}

down_kwok() {
  local -a pids
  mapfile -t pids < <(cluster_pids)
  if [[ -x "${BIN_DIR}/kwokctl" && -d "${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}" ]]; then
    log "deleting ${CLUSTER_NAME} (kwokctl delete cluster)"
    kwokctl_ delete cluster --name "${CLUSTER_NAME}" \
      --kubeconfig "${KWOKCTL_KUBECONFIG}" || log "kwokctl delete cluster failed; killing leftovers"
  fi
  # kwokctl only signals the processes: wait for them to exit, and stop whatever is
  # left, including processes of a workdir that kwokctl no longer knows about.
  mapfile -t pids < <({ printf '%s\n' "${pids[@]}"; cluster_pids; } | sort -u | sed '/^$/d')
  ((${#pids[@]})) || return 0
  if ! wait_exit 10 "${pids[@]}"; then
    local sig left
    for sig in TERM KILL; do
      mapfile -t left < <(alive "${pids[@]}")
      ((${#left[@]})) || break
      log "sending SIG${sig} to leftover processes: ${left[*]}"
      kill -s "${sig}" "${left[@]}" 2>/dev/null || true
      wait_exit 5 "${left[@]}" && break
    done
    [[ -z "$(alive "${pids[@]}")" ]] || die "processes still running: $(alive "${pids[@]}" | tr '\n' ' ')"
  fi
  # Give init a moment to reap the exited processes, so that ps/pgrep right after
  # `down` show nothing (it does so within a few seconds; not waiting is harmless).
  local deadline=$((SECONDS + 5))
  while ps -p "$(IFS=,; echo "${pids[*]}")" >/dev/null 2>&1 && ((SECONDS < deadline)); do sleep 0.25; done
}

# --------------------------------------------------------------------------- KubeRay
# KubeRay's CRDs, server-side: each is over 256 KiB, the limit of the last-applied-configuration
# annotation a client-side `kubectl apply` writes (rayjobs is ~1.3 MB). --force-conflicts: this
# script owns them, whatever applied them before.
install_kuberay_crds() {
  [[ -f "${KUBERAY_CRD_DIR}/.complete" ]] || { log "no KubeRay CRDs in ${KUBERAY_CRD_DIR}"; return 1; }
  log "installing KubeRay ${KUBERAY_VERSION} CRDs (server-side apply)"
  kubectl_ apply --server-side --force-conflicts --field-manager=kubequant-dev-cluster \
    -f "${KUBERAY_CRD_DIR}" >&2 || return 1
  # kubectl wait exits 1 at once, rather than waiting, on a CRD the API server has not given conditions
  # yet (".status.conditions accessor error: <nil>", kubernetes/kubernetes#66439): a loaded machine
  # hits it right after the apply, so it is retried.
  wait_for 120 "KubeRay's CRDs to be Established" kuberay_crds_established
}

# shellcheck disable=SC2317  # called through wait_for
kuberay_crds_established() {
  kubectl_ wait --for=condition=Established --timeout=20s \
    crd/rayclusters.ray.io crd/rayjobs.ray.io crd/rayservices.ray.io
}

# KubeRay's operator, as `up` started it (its pid file), is running.
ray_operator_alive() {
  [[ -f "${RAY_OPERATOR_PID}" ]] && [[ -n "$(alive "$(cat "${RAY_OPERATOR_PID}")")" ]]
}

# Start KubeRay's operator if it is not running (at most RAY_OPERATOR_RESTARTS restarts per `up`).
# Metrics and probe endpoints off (nothing scrapes them, and fixed ports would clash with a second
# cluster); no leader election (one operator per dev cluster).
ray_operator_restarts=0
ensure_ray_operator() {
  ray_operator_alive && return 0
  if [[ -f "${RAY_OPERATOR_PID}" ]]; then
    if ((ray_operator_restarts >= RAY_OPERATOR_RESTARTS)); then
      log "KubeRay's operator died ${ray_operator_restarts} times; giving up. Its log: ${RAY_OPERATOR_LOG}"
      return 1
    fi
    ray_operator_restarts=$((ray_operator_restarts + 1))
    log "KubeRay's operator is not running (restart ${ray_operator_restarts}/${RAY_OPERATOR_RESTARTS}); its last words:"
    tail -n 3 "${RAY_OPERATOR_LOG}" 2>/dev/null | cut -c1-300 | sed 's/^/    /' >&2 || true
  fi
  [[ -x "${BIN_DIR}/ray-operator" ]] || { log "no ${BIN_DIR}/ray-operator: run hack/build-k8s.sh kuberay"; return 1; }
  log "starting KubeRay's operator ${KUBERAY_VERSION} (log: ${RAY_OPERATOR_LOG#"${REPO_ROOT}/"})"
  # setsid: its own session, so a Ctrl-C of `up` does not stop it; 8>&-: not holding the lock.
  KUBECONFIG="${KUBECONFIG_OUT}" setsid "${BIN_DIR}/ray-operator" \
    --metrics-addr=0 --health-probe-bind-address=0 --enable-leader-election=false \
    --log-stdout-encoder=console >>"${RAY_OPERATOR_LOG}" 2>&1 </dev/null 8>&- &
  echo $! >"${RAY_OPERATOR_PID}"
  # It exits at once on a bad flag, missing CRDs or an unreachable API server.
  sleep 2
  ray_operator_alive || {
    log "KubeRay's operator exited at start; its last words:"
    tail -n 5 "${RAY_OPERATOR_LOG}" 2>/dev/null | cut -c1-300 | sed 's/^/    /' >&2
    return 1
  }
}

stop_ray_operator() {
  [[ -f "${RAY_OPERATOR_PID}" ]] || return 0
  local pid
  pid="$(cat "${RAY_OPERATOR_PID}")"
  if [[ -n "$(alive "${pid}")" ]]; then
    log "stopping KubeRay's operator (pid ${pid})"
    kill -s TERM "${pid}" 2>/dev/null || true
    wait_exit 10 "${pid}" || { kill -s KILL "${pid}" 2>/dev/null || true; wait_exit 5 "${pid}" || true; }
  fi
  rm -f "${RAY_OPERATOR_PID}"
}

up_kuberay() {
  install_kuberay_crds && ensure_ray_operator
}

# --------------------------------------------------------------------------- kind
# Optional path for machines with Docker: same labels/taints on real kind nodes,
# GPU capacity advertised by patching node status. Not exercised in CI here.
up_kind() {
  local cfg="${STATE_DIR}/kind.yaml" image="kindest/node:${KUBERNETES_VERSION}"
  cat >"${cfg}" <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
- role: control-plane
- role: worker
  labels: {kubequant.io/pool: cpu, node.kubernetes.io/instance-type: sim-cpu-8}
- role: worker
  labels: {kubequant.io/pool: cpu, node.kubernetes.io/instance-type: sim-cpu-8}
- role: worker
  labels: {kubequant.io/pool: gpu, cloud.google.com/gke-accelerator: nvidia-tesla-t4, nvidia.com/gpu.present: "true"}
- role: worker
  labels: {kubequant.io/pool: gpu, cloud.google.com/gke-accelerator: nvidia-tesla-t4, nvidia.com/gpu.present: "true"}
EOF
  kind create cluster 8>&- --name "${CLUSTER_NAME}" --image "${image}" --config "${cfg}" \
    --kubeconfig "${KUBECONFIG_OUT}" --wait 2m
  local n
  for n in $(kubectl_ get nodes -l kubequant.io/pool=gpu -o name); do
    kubectl_ taint --overwrite "${n}" nvidia.com/gpu=present:NoSchedule
    kubectl_ patch "${n}" --subresource=status --type=merge \
      -p '{"status":{"capacity":{"nvidia.com/gpu":"4"},"allocatable":{"nvidia.com/gpu":"4"}}}'
  done
}

down_kind() { kind delete cluster --name "${CLUSTER_NAME}" >&2 || true; }

# --------------------------------------------------------------------------- commands
cmd_up() {
  local start="${SECONDS}" runtime="${KUBEQUANT_DEV_CLUSTER_RUNTIME:-kwok}"
  if is_up; then
    # An up cluster whose kwok controller died (nodes go NotReady): bring it back.
    if [[ "$(cat "${RUNTIME_FILE}" 2>/dev/null)" == kwok ]] && ! kwok_alive; then ensure_kwok; fi
    # The same for KubeRay's operator (and its CRDs, for a cluster made by an older script).
    ray_operator_alive || up_kuberay
    log "${CLUSTER_NAME} is already up: export KUBECONFIG=${KUBECONFIG_OUT}"
    return 0
  fi
  if [[ -d "${STATE_DIR}" ]]; then
    log "found a stale ${STATE_DIR} (cluster not answering); cleaning it up first"
    cmd_down
  fi
  case "${runtime}" in
    kwok)
      # Everything, helm included: the e2e tests use the same binaries.
      "${HACK_DIR}/build-k8s.sh"
      mkdir -p "${STATE_DIR}"
      echo kwok >"${RUNTIME_FILE}"
      up_kwok || { log "cluster failed to start; logs: ${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}/logs"; return 1; }
      log "adding fake nodes from ${NODES_MANIFEST#"${REPO_ROOT}/"}"
      kubectl_ apply -f "${NODES_MANIFEST}" >&2
      ;;
    kind)
      if ! command -v kind >/dev/null || ! docker info >/dev/null 2>&1; then
        die "the kind runtime needs docker and kind"
      fi
      "${HACK_DIR}/build-k8s.sh" kubectl kuberay
      mkdir -p "${STATE_DIR}"
      echo kind >"${RUNTIME_FILE}"
      up_kind
      ;;
    *) die "unknown KUBEQUANT_DEV_CLUSTER_RUNTIME=${runtime} (kwok or kind)" ;;
  esac
  log "waiting for nodes to be Ready and the default ServiceAccount"
  if [[ "${runtime}" == kwok ]]; then
    wait_nodes_ready "${READY_TIMEOUT}"
  else
    kubectl_ wait --for=condition=Ready nodes -l kubequant.io/pool --timeout="${READY_TIMEOUT}s" >&2
  fi
  wait_for "${READY_TIMEOUT}" "the default ServiceAccount" default_sa_exists
  up_kuberay || { log "KubeRay failed to start; its log: ${RAY_OPERATOR_LOG}"; return 1; }
  log "${CLUSTER_NAME} is up in $((SECONDS - start))s ($(kubectl_ version -o json 2>/dev/null |
    sed -n 's/.*"gitVersion": "\([^"]*\)".*/\1/p' | tail -1)); export KUBECONFIG=${KUBECONFIG_OUT}"
}

cmd_down() {
  local runtime="kwok"
  [[ -f "${RUNTIME_FILE}" ]] && runtime="$(cat "${RUNTIME_FILE}")"
  stop_ray_operator
  if [[ "${runtime}" == kind ]]; then down_kind; else down_kwok; fi
  rm -rf "${STATE_DIR}"
  local left
  left="$(cluster_pids)"
  [[ -z "${left}" ]] || die "processes still running after down: ${left}"
  log "${CLUSTER_NAME} is down"
}

cmd_status() {
  if is_up; then
    echo "${CLUSTER_NAME}: up (runtime $(cat "${RUNTIME_FILE}" 2>/dev/null || echo '?'))"
    echo "KUBECONFIG=${KUBECONFIG_OUT}"
    kubectl_ version 2>/dev/null | sed 's/^/  /'
    kubectl_ get nodes -L kubequant.io/pool 2>/dev/null | sed 's/^/  /'
    if ray_operator_alive; then
      echo "  KubeRay ${KUBERAY_VERSION} operator: running (pid $(cat "${RAY_OPERATOR_PID}"))"
    else
      echo "  KubeRay ${KUBERAY_VERSION} operator: not running (hack/dev-cluster.sh up restarts it)"
    fi
    return 0
  fi
  echo "${CLUSTER_NAME}: down"
  local pids
  pids="$(cluster_pids)"
  [[ -z "${pids}" ]] || echo "  but these processes are running: $(echo "${pids}" | tr '\n' ' ')"
  return 1
}

# Serialize up/down of one cluster (e.g. two `make test` at once in one checkout). The
# lock lives outside its state folder, which `down` removes.
lock() {
  command -v flock >/dev/null || return 0
  local key
  key="$(printf '%s' "${STATE_DIR}" | cksum | cut -d' ' -f1)"
  exec 8>"${TMPDIR:-/tmp}/kubequant-dev-cluster-${key}.lock"
  flock -n 8 || { log "waiting for another dev-cluster.sh of this checkout"; flock 8; }
}

main() {
  case "${1:-}" in
    up) lock && cmd_up ;;
    down) lock && cmd_down ;;
    status) cmd_status ;;
    *)
      echo "usage: $0 up|down|status" >&2
      return 2
      ;;
  esac
}

# One line, parsed before it runs: editing this file during a run cannot derail it.
# Sourced (tests/unit/test_dev_cluster_script.py), it only defines the functions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; exit $?; fi
