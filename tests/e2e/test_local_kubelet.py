"""LocalKubelet (hack/local_kubelet.py) really runs the pods bound to its node:
Jobs complete or fail by what their process did, and the pod status carries what a
kubelet would report (exit code, termination message, deadline, restarts).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from local_kubelet import (
    NODE_SELECTOR,
    TAINT_KEY,
    TOLERATION,
    LocalKubelet,
    PathRewriter,
    expand_vars,
    parse_quantity,
)

# Fixtures of conftest.py: wait_until(predicate, timeout, what) -> value; namespace -> fresh name.
WaitUntil = Callable[..., Any]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NODE = "local-runner"
# Pinned to this module's node: other LocalKubelets (e.g. test_backtest_operator.py's) may
# serve pool "local" on the same cluster at the same time.
SELECTOR = {**NODE_SELECTOR, "kubernetes.io/hostname": NODE}
IMAGE = "kubequant/never-pulled:dev"  # LocalKubelet runs command_map's python3 instead
DATA_MOUNT = "/data/qlib"
CONFIG_YAML = "strategy: topk-dropout\ntopk: 50\nbenchmark: SH000300\n"


@pytest.fixture(scope="module")
def local_kubelet(
    api_client: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalKubelet]:
    data = tmp_path_factory.mktemp("qlib-data")
    (data / "calendar.txt").write_text("2020-01-02\n2020-01-03\n")
    with LocalKubelet(
        api_client,
        NODE,
        workdir=tmp_path_factory.mktemp("local-kubelet"),
        path_map={DATA_MOUNT: str(data)},
        command_map={"python3": sys.executable},
        restart_backoff_s=1.0,
    ) as kubelet:
        yield kubelet


def python_container(script: str, *args: str, **extra: Any) -> dict[str, Any]:
    return {"name": "main", "image": IMAGE, "command": ["python3", "-c", script], "args": list(args), **extra}


def local_pod_spec(container: dict[str, Any], restart_policy: str = "Never", **spec: Any) -> dict[str, Any]:
    return {
        "restartPolicy": restart_policy,
        "nodeSelector": dict(SELECTOR),
        "tolerations": [dict(TOLERATION)],
        "containers": [container],
        **spec,
    }


def job_manifest(name: str, pod_spec: dict[str, Any], backoff_limit: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": backoff_limit, "template": {"spec": pod_spec}},
    }


def job_condition(batch: client.BatchV1Api, namespace: str, name: str, type_: str) -> Callable[[], Any]:
    def check() -> client.V1Job | None:
        job = batch.read_namespaced_job_status(name, namespace)
        return (
            job if any(c.type == type_ and c.status == "True" for c in job.status.conditions or []) else None
        )

    return check


def only_pod(core: client.CoreV1Api, namespace: str, job: str) -> client.V1Pod:
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def terminated(pod: client.V1Pod) -> client.V1ContainerStateTerminated:
    (status,) = pod.status.container_statuses
    assert status.state.terminated is not None, status.state
    return status.state.terminated


def pod_phase(core: client.CoreV1Api, namespace: str, name: str, *phases: str) -> Callable[[], Any]:
    def check() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in phases else None

    return check


# --------------------------------------------------------------------------- Jobs

BACKTEST = """
import json, os, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
with open(args["--config"]) as fh:
    config = fh.read()
result = {"config": config, "config_path": args["--config"],
          "token": os.environ["API_TOKEN"], "pod": os.environ["POD_NAME"]}
print("backtest finished", flush=True)
with open(args["--termination-log"], "w") as fh:
    json.dump(result, fh, sort_keys=True)
"""


def test_job_pod_runs_locally_and_reports_its_result(
    local_kubelet: LocalKubelet,
    core: client.CoreV1Api,
    batch: client.BatchV1Api,
    namespace: str,
    wait_until: WaitUntil,
) -> None:
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "backtest-config"}, "data": {"backtest.yaml": CONFIG_YAML}}
    )
    core.create_namespaced_secret(namespace, {"metadata": {"name": "api"}, "stringData": {"token": "s3cr3t"}})
    container = python_container(
        BACKTEST,
        "--config",
        "/etc/kubequant/backtest.yaml",
        "--termination-log",
        "/dev/termination-log",
        env=[
            {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        volumeMounts=[{"name": "config", "mountPath": "/etc/kubequant", "readOnly": True}],
    )
    spec = local_pod_spec(container, volumes=[{"name": "config", "configMap": {"name": "backtest-config"}}])
    batch.create_namespaced_job(namespace, job_manifest("backtest", spec))

    job = wait_until(job_condition(batch, namespace, "backtest", "Complete"), 90, "the Job to complete")
    assert job.status.succeeded == 1 and not job.status.failed

    pod = only_pod(core, namespace, "backtest")
    assert pod.spec.node_name == NODE
    assert pod.status.phase == "Succeeded"
    assert pod.status.pod_ip == "127.0.0.1"
    state = terminated(pod)
    assert (state.exit_code, state.reason) == (0, "Completed")
    config_path = local_kubelet.pod_dir(pod.metadata.name, namespace) / "etc/kubequant/backtest.yaml"
    expected = {
        "config": CONFIG_YAML,
        "config_path": str(config_path),
        "token": "s3cr3t",
        "pod": pod.metadata.name,
    }
    assert state.message == json.dumps(expected, sort_keys=True)
    assert "backtest finished" in local_kubelet.logs(pod.metadata.name, namespace)


def test_job_fails_with_the_exit_code_of_its_process(
    local_kubelet: LocalKubelet,
    core: client.CoreV1Api,
    batch: client.BatchV1Api,
    namespace: str,
    wait_until: WaitUntil,
) -> None:
    script = "import sys; print('data bundle missing', file=sys.stderr); sys.exit(3)"
    container = python_container(script, terminationMessagePolicy="FallbackToLogsOnError")
    batch.create_namespaced_job(namespace, job_manifest("fails", local_pod_spec(container)))

    job = wait_until(job_condition(batch, namespace, "fails", "Failed"), 90, "the Job to fail")
    assert job.status.failed == 1 and not job.status.succeeded
    failed = next(c for c in job.status.conditions if c.type == "Failed")
    assert failed.reason == "BackoffLimitExceeded"

    pod = only_pod(core, namespace, "fails")
    assert (pod.spec.node_name, pod.status.phase) == (NODE, "Failed")
    state = terminated(pod)
    assert (state.exit_code, state.reason) == (3, "Error")
    # FallbackToLogsOnError: no termination message was written, so the output is the message.
    assert state.message.strip() == "data bundle missing"


def test_active_deadline_seconds_kills_the_pod(
    local_kubelet: LocalKubelet,
    core: client.CoreV1Api,
    batch: client.BatchV1Api,
    namespace: str,
    wait_until: WaitUntil,
) -> None:
    container = python_container("import time; print('sleeping', flush=True); time.sleep(60)")
    spec = local_pod_spec(container, activeDeadlineSeconds=3)
    started = time.monotonic()
    batch.create_namespaced_job(namespace, job_manifest("sleeper", spec))

    job = wait_until(job_condition(batch, namespace, "sleeper", "Failed"), 60, "the Job to fail")
    assert time.monotonic() - started < 30, "the deadline was not enforced"
    assert job.status.failed == 1

    pod = only_pod(core, namespace, "sleeper")
    assert (pod.status.phase, pod.status.reason) == ("Failed", "DeadlineExceeded")
    state = terminated(pod)
    assert state.exit_code == 128 + 15  # SIGTERM
    assert (state.finished_at - pod.status.start_time).total_seconds() < 15
    assert "sleeping" in local_kubelet.logs(pod.metadata.name, namespace)


RETRY = """
import os, sys
marker = os.path.join(sys.argv[1], "attempted")
if not os.path.exists(marker):
    open(marker, "w").close()
    print("first attempt fails", flush=True)
    sys.exit(1)
print("second attempt succeeds", flush=True)
with open(sys.argv[2], "w") as fh:
    fh.write("second try")
"""


def test_restart_policy_on_failure_restarts_in_place(
    local_kubelet: LocalKubelet,
    core: client.CoreV1Api,
    batch: client.BatchV1Api,
    namespace: str,
    wait_until: WaitUntil,
) -> None:
    container = python_container(
        RETRY, "/state", "/dev/termination-log", volumeMounts=[{"name": "state", "mountPath": "/state"}]
    )
    spec = local_pod_spec(container, restart_policy="OnFailure", volumes=[{"name": "state", "emptyDir": {}}])
    batch.create_namespaced_job(namespace, job_manifest("retry", spec, backoff_limit=3))

    wait_until(job_condition(batch, namespace, "retry", "Complete"), 90, "the Job to complete")
    pod = only_pod(core, namespace, "retry")
    (status,) = pod.status.container_statuses
    assert status.restart_count == 1
    assert status.last_state.terminated.exit_code == 1
    assert (status.state.terminated.exit_code, status.state.terminated.message) == (0, "second try")
    output = local_kubelet.logs(pod.metadata.name, namespace)
    assert output.index("first attempt fails") < output.index("second attempt succeeds")


# --------------------------------------------------------------------------- scheduling


def test_pod_without_toleration_never_lands_on_local_node(
    local_kubelet: LocalKubelet, core: client.CoreV1Api, namespace: str, wait_until: WaitUntil
) -> None:
    # The selector matches the LocalKubelet node and nothing else, and that node is Ready
    # (and not kwok's): only its taint can keep a pod off it.
    (node,) = core.list_node(label_selector=",".join(f"{k}={v}" for k, v in SELECTOR.items())).items
    assert node.metadata.name == NODE
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
    assert "kwok.x-k8s.io/node" not in (node.metadata.annotations or {})
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [(TAINT_KEY, "true", "NoSchedule")]

    def pod(name: str, **spec: Any) -> dict[str, Any]:
        container = python_container("print('ran')")
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": dict(SELECTOR),
                "containers": [container],
                **spec,
            },
        }

    core.create_namespaced_pod(namespace, pod("no-toleration"))
    core.create_namespaced_pod(namespace, pod("tolerates", tolerations=[dict(TOLERATION)]))

    def unschedulable() -> client.V1PodCondition | None:
        conditions = core.read_namespaced_pod("no-toleration", namespace).status.conditions or []
        return next((c for c in conditions if c.type == "PodScheduled" and c.status == "False"), None)

    condition = wait_until(unschedulable, 60, "the scheduler to give up on the pod")
    assert condition.reason == "Unschedulable"
    assert "untolerated taint" in condition.message, condition.message
    # Its twin with the toleration lands there and runs.
    twin = wait_until(pod_phase(core, namespace, "tolerates", "Succeeded", "Failed"), 60, "the twin to run")
    assert (twin.spec.node_name, twin.status.phase) == (NODE, "Succeeded")
    assert local_kubelet.logs("tolerates", namespace) == "ran\n"

    still = core.read_namespaced_pod("no-toleration", namespace)
    assert still.spec.node_name is None and still.status.phase == "Pending"
    with pytest.raises(KeyError):
        local_kubelet.logs("no-toleration", namespace)


# --------------------------------------------------------------------------- pod lifecycle


def test_pod_deleted_while_running_is_killed_and_removed(
    local_kubelet: LocalKubelet, core: client.CoreV1Api, namespace: str, wait_until: WaitUntil
) -> None:
    script = "import os, time; print('pid', os.getpid(), flush=True); time.sleep(600)"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "long-runner"},
        "spec": local_pod_spec(python_container(script), terminationGracePeriodSeconds=5),
    }
    core.create_namespaced_pod(namespace, pod)
    wait_until(pod_phase(core, namespace, "long-runner", "Running"), 60, "the pod to run")

    def pid() -> int | None:
        with contextlib.suppress(KeyError):
            for line in local_kubelet.logs("long-runner", namespace).splitlines():
                if line.startswith("pid "):
                    return int(line.split()[1])
        return None

    process = wait_until(pid, 30, "the process to print its pid")
    os.kill(process, 0)  # it runs, here

    core.delete_namespaced_pod("long-runner", namespace, grace_period_seconds=2)

    def removed() -> bool:
        try:
            core.read_namespaced_pod("long-runner", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_until(removed, 30, "LocalKubelet to kill the pod and remove it")
    with pytest.raises(ProcessLookupError):
        os.kill(process, 0)


FEATURES = """
import json, os, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
sa = args["--sa"]
out = {
    "calendar": open(os.path.join(args["--data"], "calendar.txt")).read(),
    "secret": open(args["--secret"]).read(),
    "secret_mode": oct(os.stat(args["--secret"]).st_mode & 0o777),
    "sa_namespace": open(os.path.join(sa, "namespace")).read(),
    "sa_token": len(open(os.path.join(sa, "token")).read()) > 100,
    "sa_ca": open(os.path.join(sa, "ca.crt")).read().startswith("-----BEGIN CERTIFICATE-----"),
    "cwd_is_scratch": os.path.realpath(os.getcwd()) == os.path.realpath(args["--scratch"]),
    "escaped": args["--escaped"],
    "report": os.environ["REPORT"],
    "env": {k: os.environ.get(k) for k in ["CFG_mode", "POD_NS", "POD_IP", "NODE", "APP",
                                           "CPU_MILLIS", "MEM_MI", "KUBERNETES_SERVICE_HOST"]},
}
with open(args["--out"], "w") as fh:
    json.dump(out, fh)
"""


def test_env_volumes_and_paths_are_materialized(
    local_kubelet: LocalKubelet,
    core: client.CoreV1Api,
    namespace: str,
    wait_until: WaitUntil,
    kube_config: client.Configuration,
) -> None:
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"mode": "paper"}}
    )
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "t0k3n"}}
    )

    def field(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    def resource(name: str, divisor: str) -> dict[str, Any]:
        return {"valueFrom": {"resourceFieldRef": {"resource": name, "divisor": divisor}}}

    container = python_container(
        FEATURES,
        *("--data", "$(DATA_DIR)", "--sa", "/var/run/secrets/kubernetes.io/serviceaccount"),
        *("--scratch", "/scratch", "--secret", "/etc/creds/api-token"),
        *("--out", "/dev/termination-log", "--escaped", "$$(DATA_DIR)"),
        envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        env=[
            {"name": "POD_NS", **field("metadata.namespace")},
            {"name": "POD_IP", **field("status.podIP")},
            {"name": "NODE", **field("spec.nodeName")},
            {"name": "APP", **field("metadata.labels['app']")},
            {"name": "CPU_MILLIS", **resource("limits.cpu", "1m")},
            {"name": "MEM_MI", **resource("limits.memory", "1Mi")},
            {"name": "DATA_DIR", "value": DATA_MOUNT},
            {"name": "REPORT", "value": "$(DATA_DIR)/report.json"},
        ],
        resources={"limits": {"cpu": "500m", "memory": "256Mi"}},
        workingDir="/scratch",
        volumeMounts=[
            {"name": "data", "mountPath": DATA_MOUNT},
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
        ],
    )
    volumes = [
        {"name": "data", "hostPath": {"path": "/mnt/qlib", "type": "Directory"}},
        {"name": "scratch", "emptyDir": {}},
        {
            "name": "creds",
            "secret": {
                "secretName": "creds",
                "items": [{"key": "token", "path": "api-token", "mode": 0o400}],
            },
        },
    ]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "features", "labels": {"app": "kubequant"}},
        "spec": local_pod_spec(container, volumes=volumes),
    }
    core.create_namespaced_pod(namespace, pod)
    done = wait_until(pod_phase(core, namespace, "features", "Succeeded", "Failed"), 60, "the pod to finish")
    state = terminated(done)
    assert done.status.phase == "Succeeded", (state, local_kubelet.logs("features", namespace))
    seen = json.loads(state.message)

    data_dir = local_kubelet.path_map[DATA_MOUNT]
    pod_dir = local_kubelet.pod_dir("features", namespace)
    assert seen["calendar"] == "2020-01-02\n2020-01-03\n"  # hostPath mapped through path_map
    assert (seen["secret"], seen["secret_mode"]) == ("t0k3n", "0o400")
    assert seen["sa_namespace"] == namespace  # the projected kube-api-access volume
    assert seen["sa_token"] is True and seen["sa_ca"] is True
    assert seen["cwd_is_scratch"] is True
    assert seen["escaped"] == "$(DATA_DIR)"
    assert seen["report"] == f"{pod_dir}{DATA_MOUNT}/report.json"
    assert Path(pod_dir, DATA_MOUNT.lstrip("/")).resolve() == Path(data_dir).resolve()
    assert seen["env"] == {
        "CFG_mode": "paper",
        "POD_NS": namespace,
        "POD_IP": "127.0.0.1",
        "NODE": NODE,
        "APP": "kubequant",
        "CPU_MILLIS": "500",
        "MEM_MI": "256",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
    }


def test_pod_waits_for_a_missing_secret(
    local_kubelet: LocalKubelet, core: client.CoreV1Api, namespace: str, wait_until: WaitUntil
) -> None:
    script = "import os, sys; open(sys.argv[1], 'w').write(os.environ['TOKEN'])"
    container = python_container(
        script,
        "/dev/termination-log",
        env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}],
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "patient"},
        "spec": local_pod_spec(container),
    }
    core.create_namespaced_pod(namespace, pod)

    def config_error() -> client.V1ContainerStateWaiting | None:
        statuses = core.read_namespaced_pod("patient", namespace).status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        return waiting if waiting is not None and waiting.reason == "CreateContainerConfigError" else None

    waiting = wait_until(config_error, 60, "CreateContainerConfigError")
    assert waiting.message == 'secret "late" not found'
    assert core.read_namespaced_pod("patient", namespace).status.phase == "Pending"

    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "late"}, "stringData": {"token": "finally"}}
    )
    done = wait_until(pod_phase(core, namespace, "patient", "Succeeded", "Failed"), 60, "the pod to finish")
    assert done.status.phase == "Succeeded"
    assert terminated(done).message == "finally"


# --------------------------------------------------------------------------- pure helpers


def test_path_rewriting_expansion_and_quantities() -> None:
    rewrite = PathRewriter(
        {
            "/etc/kubequant": "/w/uid/etc/kubequant",
            "/etc/kubequant/extra": "/w/uid/etc/kubequant/extra",
            "/dev/termination-log": "/w/uid/dev/termination-log",
        }
    )
    assert rewrite("--config=/etc/kubequant/backtest.yaml") == "--config=/w/uid/etc/kubequant/backtest.yaml"
    assert rewrite("/etc/kubequant/extra/x") == "/w/uid/etc/kubequant/extra/x"  # longest prefix wins
    assert rewrite("/etc/kubequantum /tmp/etc/kubequant ./etc/kubequant") == (
        "/etc/kubequantum /tmp/etc/kubequant ./etc/kubequant"  # only whole, absolute prefixes
    )
    assert rewrite(rewrite("/dev/termination-log")) == "/w/uid/dev/termination-log"  # never twice
    assert expand_vars("$(A)/x $(B) $$(A) $(A", {"A": "/a"}) == "/a/x $(B) $(A) $(A"
    assert [parse_quantity(q) for q in ("500m", "1Gi", "2e3", "1.5")] == [
        Fraction(1, 2),
        Fraction(2**30),
        Fraction(2000),
        Fraction(3, 2),
    ]
