"""Field values a user gets wrong: unknown time zones, NaN and infinity, impossible pod resources.

Each rule is one ``Rule`` (CEL for the API server, a Python check for ``kubequant validate``); the
bad manifests (``bad_manifests/``) cover one case of each end to end, client and server side. Here:
the zone list is pinned and deterministic, every float field refuses non-finite numbers, and the
resource rules agree with the API server's pod validation case by case (the same table runs against
a real API server in tests/e2e/test_crds_server.py).
"""

from __future__ import annotations

import json
import math
import tomllib
import zoneinfo
from decimal import MAX_EMAX, MIN_EMIN, Decimal, localcontext
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.utils.quantity import parse_quantity as kubernetes_parse_quantity
from pydantic import BaseModel

from kubequant.api import KINDS
from kubequant.api.common import ResourceRequirements
from kubequant.api.quantity import QUANTITY_PATTERN, parse_quantity
from kubequant.api.timezones import time_zones, tzdata_version
from kubequant.crdgen import render_crds
from kubequant.manifests import InvalidManifest, parse_resource
from kubequant.operator.builders.common import resources_dict

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]

# Pod resources, and the map a Pod asking for them is refused at (None: accepted); the e2e test
# checks the same table against a real API server's Pod validation and the CRDs.
RESOURCE_CASES: list[tuple[dict[str, Any], str | None]] = [
    (case["resources"], case["refusedAt"])
    for case in yaml.safe_load((Path(__file__).parent / "resource_cases.yaml").read_text())
]


def backtest(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "metadata": {"name": "x"},
        "spec": {
            "period": {"start": "2022-01-04", "end": "2022-06-30"},
            "signal": {"file": {"path": "/data/scores.parquet"}},
            **spec,
        },
    }


def errors(body: dict[str, Any]) -> dict[str, str]:
    """Field path → message of every error ``kubequant validate`` reports for ``body`` (empty if valid)."""
    try:
        parse_resource(body)
    except InvalidManifest as err:
        return {e.where: e.one_line() for e in err.errors}
    return {}


# --------------------------------------------------------------------------- time zones


def test_zone_list_is_tzdatas_pinned_release() -> None:
    """The CRDs carry the zone list: the tzdata that produced it is the pinned one, on every machine."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pins = [d for d in project["project"]["dependencies"] if d.replace(" ", "").startswith("tzdata==")]
    assert len(pins) == 1, "pin tzdata to one release in pyproject.toml (the CRDs' zone list comes from it)"
    assert pins[0].split("==")[1] == tzdata_version(), (
        f"tzdata {tzdata_version()} is installed, {pins[0]} is pinned: run `make venv`, or `make lock` and "
        "`kubequant crds generate` after changing the pin"
    )


def test_zone_list_is_every_iana_name_and_nothing_else() -> None:
    zones = time_zones()
    assert len(zones) > 550 and list(zones) == sorted(set(zones))
    for name in ("Asia/Shanghai", "America/New_York", "Europe/London", "UTC", "Etc/GMT+5", "US/Eastern"):
        assert name in zones
    assert "Factory" not in zones and "Mars/Olympus" not in zones and "posixrules" not in zones
    for name in zones:  # every accepted name works at run time
        zoneinfo.ZoneInfo(name)


def test_both_kinds_refuse_an_unknown_zone_and_suggest_the_close_one() -> None:
    policy = {"apiVersion": "kubequant.io/v1alpha1", "kind": "RiskPolicy", "metadata": {"name": "p"}}
    session = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "LiveTradingSession",
        "metadata": {"name": "s"},
        "spec": {"account": "a", "riskPolicyRef": {"name": "p"}},
    }
    for doc in (policy, session):
        doc["spec"] = {**doc.get("spec", {}), "timezone": "Mars/Olympus"}
        assert "not an IANA time zone" in errors(doc)["spec.timezone"]
        doc["spec"]["timezone"] = "america/new_york"
        assert "did you mean America/New_York?" in errors(doc)["spec.timezone"]
        doc["spec"]["timezone"] = "Europe/Londn"
        assert "did you mean Europe/London?" in errors(doc)["spec.timezone"]
        doc["spec"]["timezone"] = "Etc/GMT-14"
        assert errors(doc) == {}


def _timezone_rules(crd: dict[str, Any]) -> list[str]:
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return [r["rule"] for r in spec["properties"]["timezone"]["x-kubernetes-validations"]]


def test_crds_carry_the_zone_list_as_one_cel_rule_and_stay_small() -> None:
    crds = {
        yaml.safe_load(text)["spec"]["names"]["kind"]: yaml.safe_load(text) for text in render_crds().values()
    }
    expected = "self in [" + ", ".join(f"'{z}'" for z in time_zones()) + "]"
    for kind in ("RiskPolicy", "LiveTradingSession"):
        assert _timezone_rules(crds[kind]) == [expected]
    # `kubectl apply` without --server-side keeps the whole object in a 256 KiB annotation; the API
    # server's own limit (etcd's 1.5 MiB) is far above that.
    for kind, crd in crds.items():
        size = len(json.dumps(crd, separators=(",", ":")))
        assert size < 128 * 1024, f"{kind}'s CRD is {size} bytes as JSON"


# --------------------------------------------------------------------------- NaN and infinity


def _models(root: type[BaseModel]) -> set[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    stack = [root]
    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.add(model)
        for info in model.model_fields.values():
            todo = [info.annotation]
            while todo:
                tp = todo.pop()
                if isinstance(tp, type) and issubclass(tp, BaseModel):
                    stack.append(tp)
                todo.extend(get_args(tp))
    return seen


def _float_fields() -> list[tuple[type[BaseModel], str, str]]:
    """(model, field, where the floats are: "value", "list" items or "dict" values) of every field that holds floats."""
    out = set()
    for kind in KINDS.values():
        for model in _models(kind):
            for name, info in model.model_fields.items():
                todo, floats, container = [info.annotation], False, "value"
                while todo:
                    tp = todo.pop()
                    floats |= tp is float
                    if get_origin(tp) in (list, dict):
                        container = get_origin(tp).__name__
                    todo.extend(get_args(tp))
                if floats:
                    out.add((model, info.alias or name, container))
    return sorted(out, key=lambda m: (m[0].__name__, m[1]))


FLOAT_FIELDS = _float_fields()


def test_there_are_float_fields_in_spec_and_status() -> None:
    names = {f"{m.__name__}.{f}" for m, f, _ in FLOAT_FIELDS}
    assert {"Exchange.minCost", "Limits.maxOrderNotional", "LiveTradingSessionSpec.startingCash"} <= names
    assert len(FLOAT_FIELDS) > 40


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "model,field,in_list", FLOAT_FIELDS, ids=[f"{m.__name__}.{f}" for m, f, _ in FLOAT_FIELDS]
)
def test_every_float_field_refuses_nan_and_infinity(
    model: type[BaseModel], field: str, in_list: str, value: float
) -> None:
    held = {"list": [1.0, value], "dict": {"close": 0.5, "volume": value}}.get(in_list, value)
    with pytest.raises(Exception) as raised:
        model.model_validate({field: held})
    kinds = {(e["loc"][0], e["type"]) for e in raised.value.errors()}  # type: ignore[attr-defined]
    assert (field, "finite_number") in kinds, kinds


def test_nan_inside_free_form_kwargs_is_refused_naming_it() -> None:
    body = backtest()
    body["spec"]["signal"] = {
        "model": {
            "model": {"class": "LGBModel", "kwargs": {"params": {"grid": [0.1, math.inf]}}},
            "segments": {
                "train": {"start": "2020-01-01", "end": "2021-06-30"},
                "valid": {"start": "2021-07-01", "end": "2021-12-31"},
                "test": {"start": "2022-01-01", "end": "2022-12-29"},
            },
        }
    }
    assert list(errors(body)) == ["spec.signal.model.model.kwargs.params.grid[1]"]


# --------------------------------------------------------------------------- pod resources


@given(st.from_regex(QUANTITY_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 24))
def test_quantities_parse_as_the_kubernetes_client_does(text: str) -> None:
    try:
        expected = kubernetes_parse_quantity(text)
        ours = parse_quantity(text)
    except (ValueError, ArithmeticError):
        return  # a form one of the two cannot read (an exponent past Decimal's range): nothing to compare
    # The client rounds to Decimal's default 28 digits (one multiplication); ours is exact.
    with localcontext() as ctx:
        ctx.prec, ctx.Emax, ctx.Emin = 28, MAX_EMAX, MIN_EMIN
        assert +ours == +expected


def test_quantity_examples() -> None:
    assert parse_quantity("500m") == Decimal("0.5") and parse_quantity("2Gi") == 2 * 2**30
    assert (
        parse_quantity("1e3") == 1000 and parse_quantity(-1) == -1 and parse_quantity(".5") == Decimal("0.5")
    )
    for bad in ("4 GB", "1.5.5", "", "Gi", True):
        with pytest.raises(ValueError):
            parse_quantity(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "resources,refused_at", RESOURCE_CASES, ids=[json.dumps(c[0]) for c in RESOURCE_CASES]
)
def test_resources_are_checked_as_the_api_server_checks_a_pod(
    resources: dict[str, Any], refused_at: str | None
) -> None:
    found = errors(backtest(pod={"resources": resources}))
    if refused_at is None:
        assert found == {}
    else:
        where = "spec.pod.resources" + (f".{refused_at}" if refused_at else "")
        assert list(found) == [where], found


@pytest.mark.parametrize(
    "resources,refused_at", RESOURCE_CASES, ids=[json.dumps(c[0]) for c in RESOURCE_CASES]
)
def test_the_operator_gives_a_device_its_limit(resources: dict[str, Any], refused_at: str | None) -> None:
    """Kubernetes wants a limit equal to the request for a device or hugepages: a request alone becomes both."""
    if refused_at is not None:
        return
    built = resources_dict(ResourceRequirements.model_validate(resources))
    for name, quantity in built.get("requests", {}).items():
        if ("/" in name and "kubernetes.io/" not in name) or name.startswith("hugepages-"):
            assert built["limits"][name] == quantity, built


def test_resource_rules_are_on_every_kind_that_has_pods() -> None:
    seen = {m for kind in KINDS.values() for m in _models(kind)}
    assert ResourceRequirements in seen
    session = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "LiveTradingSession",
        "metadata": {"name": "s"},
        "spec": {"account": "a", "riskPolicyRef": {"name": "p"}, "journal": {"size": 0}},
    }
    assert "above zero" in errors(session)["spec.journal.size"]
