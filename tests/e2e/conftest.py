"""Fixtures for end-to-end tests against a real Kubernetes API server.

The cluster comes from ``KUBECONFIG`` or, if that is unset, from the dev cluster's
``.dev-cluster/kubeconfig`` (``make dev-cluster``; ``hack/run-tests.sh`` starts one
by itself). Without a reachable cluster every e2e test fails with a message that
says how to get one: these tests are never skipped silently.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_KUBECONFIG = REPO_ROOT / ".dev-cluster" / "kubeconfig"
VERSIONS_ENV = REPO_ROOT / "hack" / "versions.env"

T = TypeVar("T")


def _read_versions_env() -> dict[str, str]:
    versions = {}
    for line in VERSIONS_ENV.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip().strip("\"'")
    return versions


def _wait_until(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


WaitUntil = Callable[..., Any]


@pytest.fixture(scope="session")
def pinned_versions() -> dict[str, str]:
    """KEY=value pairs of hack/versions.env."""
    return _read_versions_env()


@pytest.fixture(scope="session")
def wait_until() -> WaitUntil:
    """``wait_until(predicate, timeout, what)``: poll until truthy, return that value, else fail."""
    return _wait_until


@pytest.fixture(scope="session")
def kube_config() -> client.Configuration:
    """The admin client configuration of the cluster under test."""
    env = os.environ.get("KUBECONFIG")
    source = f"KUBECONFIG={env}" if env else str(DEV_KUBECONFIG)
    if not env and not DEV_KUBECONFIG.exists():
        pytest.fail(
            "e2e tests need a Kubernetes API server, and there is none: KUBECONFIG is unset and "
            f"{DEV_KUBECONFIG} does not exist. Run them with `hack/run-tests.sh tests/e2e` "
            "(starts and stops a local cluster), or `make dev-cluster` and then "
            f"`KUBECONFIG={DEV_KUBECONFIG} .venv/bin/pytest tests/e2e`.",
            pytrace=False,
        )
    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=None if env else str(DEV_KUBECONFIG), client_configuration=cfg)
        with client.ApiClient(cfg) as api:
            client.VersionApi(api).get_code(_request_timeout=10)
    except Exception as exc:
        pytest.fail(
            f"e2e tests need a Kubernetes API server, and the one of {source} does not answer: "
            f"{type(exc).__name__}: {exc}. Is the cluster up? (`hack/dev-cluster.sh status`)",
            pytrace=False,
        )
    return cfg


@pytest.fixture(scope="session")
def api_client(kube_config: client.Configuration) -> Iterator[client.ApiClient]:
    with client.ApiClient(kube_config) as api:
        yield api


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def batch(api_client: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(api_client)


@pytest.fixture(scope="session")
def rbac(api_client: client.ApiClient) -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(api_client)


@pytest.fixture(scope="session")
def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


@pytest.fixture(scope="session")
def pool_nodes(core: client.CoreV1Api) -> dict[str, set[str]]:
    """Names of the Ready nodes of each pool (label kubequant.io/pool)."""
    pools: dict[str, set[str]] = {}
    for node in core.list_node(label_selector="kubequant.io/pool").items:
        ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
        if ready:
            pools.setdefault(node.metadata.labels["kubequant.io/pool"], set()).add(node.metadata.name)
    for pool in ("cpu", "gpu"):
        if not pools.get(pool):
            pytest.fail(f"the cluster has no Ready node in pool {pool!r} (hack/nodes.yaml)", pytrace=False)
    return pools


NamespaceFactory = Callable[..., str]


@pytest.fixture
def make_namespace(core: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[NamespaceFactory]:
    """Create uniquely named namespaces for one test; all are deleted after it."""
    created: list[str] = []
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower().removeprefix("test_"))[:40].strip("-")

    def make(labels: dict[str, str] | None = None) -> str:
        name = f"e2e-{stem}-{uuid.uuid4().hex[:6]}"
        body: dict[str, Any] = {
            "metadata": {"name": name, "labels": {"kubequant.io/e2e": "true", **(labels or {})}}
        }
        core.create_namespace(body)
        created.append(name)
        # Until the default ServiceAccount exists, pods are rejected and the Job controller backs off.
        _wait_until(
            lambda: any(
                sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items
            ),
            30,
            f"the default ServiceAccount of {name}",
            interval=0.1,
        )
        return name

    yield make
    for name in created:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def namespace(make_namespace: NamespaceFactory) -> str:
    """A fresh namespace for the test, deleted afterwards."""
    return make_namespace()
