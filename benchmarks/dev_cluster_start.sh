#!/usr/bin/env bash
# Start time of the dev cluster on a loaded machine: `hack/dev-cluster.sh up` (then `down`) of a
# separate cluster (own name, folder and ports, so the shared dev cluster is never touched),
# RUNS times, with BURNERS busy loops on the same CPUs. Prints each run's seconds, the load
# average, kwok controller restarts, and the median and worst.
#
#   benchmarks/dev_cluster_start.sh [RUNS=3] [BURNERS=2] [CPUS=0] [STALL=0]
#
# CPUS (a taskset list) pins the cluster and the burners together, so that the load is heavy for
# the cluster under test while the machine's other CPUs stay free for everyone else.
# STALL > 0 freezes the API server (SIGSTOP) for that many seconds as soon as it starts: the
# failure of a very slow API server, where kwok's controller gives up after ~30 s of
# "connection refused" and must be restarted for the nodes to become Ready.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${1:-3}" BURNERS="${2:-2}" CPUS="${3:-0}" STALL="${4:-0}"
NAME="kq-load-$$"
DIR="$(mktemp -d "${TMPDIR:-/tmp}/kq-load-cluster.XXXXXX")"
export KUBEQUANT_DEV_CLUSTER_NAME="${NAME}" KUBEQUANT_DEV_CLUSTER_DIR="${DIR}/state"

burners=()
stop_burners() {
  ((${#burners[@]})) && kill "${burners[@]}" 2>/dev/null
  wait "${burners[@]}" 2>/dev/null || true
  burners=()
}
cleanup() {
  stop_burners
  taskset -c "${CPUS}" "${REPO_ROOT}/hack/dev-cluster.sh" down >/dev/null 2>&1 || true
  rm -rf "${DIR}"
}
trap cleanup EXIT

times=()
for run in $(seq "${RUNS}"); do
  for _ in $(seq "${BURNERS}"); do
    taskset -c "${CPUS}" bash -c 'while :; do :; done' &
    burners+=("$!")
  done
  sleep 2
  start="$(date +%s.%N)"
  rc=0
  if ((STALL > 0)); then
    (
      pid_file="${KUBEQUANT_DEV_CLUSTER_DIR}/kwok/clusters/${NAME}/pids/kube-apiserver.pid"
      until [[ -s "${pid_file}" ]]; do sleep 0.1; done
      kill -STOP "$(cat "${pid_file}")" && sleep "${STALL}" && kill -CONT "$(cat "${pid_file}")"
    ) &
  fi
  taskset -c "${CPUS}" "${REPO_ROOT}/hack/dev-cluster.sh" up 2>"${DIR}/up-${run}.log" || rc=$?
  seconds="$(echo "$(date +%s.%N) - ${start}" | bc)"
  load="$(cut -d' ' -f1-3 /proc/loadavg)"
  restarts="$(grep -c "kwok's controller is not running" "${DIR}/up-${run}.log" || true)"
  stop_burners
  printf 'run %s: %s s (exit %s), load average %s, kwok restarts %s\n' \
    "${run}" "${seconds}" "${rc}" "${load}" "${restarts}"
  ((rc == 0)) || { echo "--- up log:"; cat "${DIR}/up-${run}.log"; }
  times+=("${seconds}")
  "${REPO_ROOT}/hack/dev-cluster.sh" down >/dev/null 2>&1
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {
  printf "median %.1f s, worst %.1f s over %d runs\n", (NR % 2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[NR], NR }'
