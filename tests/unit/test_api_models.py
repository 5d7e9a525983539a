"""The API models: defaults, round trips, and the documentation every field and rule must carry."""

from __future__ import annotations

import copy
import datetime as dt
import typing
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from kubequant.api import KINDS, Resource
from kubequant.api.base import ApiModel, Rule
from kubequant.api.common import Condition
from kubequant.api.resource import ChildReference

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))

SEGMENTS = {
    "train": {"start": "2020-01-01", "end": "2021-06-30"},
    "valid": {"start": "2021-07-01", "end": "2021-12-31"},
    "test": {"start": "2022-01-01", "end": "2022-12-29"},
}

# The least a user must write for each kind; everything else has a default.
MINIMAL: dict[str, dict[str, Any]] = {
    "Backtest": {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "metadata": {"name": "minimal"},
        "spec": {
            "period": {"start": "2022-01-04", "end": "2022-06-30"},
            "signal": {"model": {"segments": SEGMENTS}},
        },
    },
    "TrainingJob": {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "minimal"},
        "spec": {"dataset": {"segments": SEGMENTS}},
    },
    "LiveTradingSession": {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "LiveTradingSession",
        "metadata": {"name": "minimal"},
        "spec": {"account": "paper-001", "riskPolicyRef": {"name": "default-limits"}},
    },
    "RiskPolicy": {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "RiskPolicy",
        "metadata": {"name": "minimal"},
    },
}

# Imperative verbs a rule's fix starts with ("…; move end later").
FIX_VERBS = {"add", "choose", "leave", "list", "lower", "move", "raise", "remove", "set", "swap", "use"}


def minimal(kind: str) -> dict[str, Any]:
    return copy.deepcopy(MINIMAL[kind])


def reachable_models(root: type[pydantic.BaseModel]) -> list[type[pydantic.BaseModel]]:
    """Every model a field of ``root`` (transitively) holds, ``root`` first."""
    found: list[type[pydantic.BaseModel]] = []

    def walk(model: type[pydantic.BaseModel]) -> None:
        if model in found:
            return
        found.append(model)
        for info in model.model_fields.values():
            for sub in models_in(info.annotation):
                walk(sub)

    walk(root)
    return found


def models_in(annotation: Any) -> list[type[pydantic.BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def all_models() -> list[type[pydantic.BaseModel]]:
    seen: list[type[pydantic.BaseModel]] = []
    for cls in KINDS.values():
        seen += [m for m in reachable_models(cls) if m not in seen]
    return seen


def all_rules() -> list[tuple[str, Rule]]:
    rules = [(model.__name__, rule) for model in all_models() for rule in getattr(model, "__rules__", ())]
    rules += [
        (f"{cls.__name__} (CRD)", rule) for cls in KINDS.values() for rule in cls.__crd__.extra_spec_rules
    ]
    return rules


RULES = all_rules()


# --------------------------------------------------------------------------- defaults


@pytest.mark.parametrize("kind", list(KINDS))
def test_minimal_manifest_is_valid(kind: str) -> None:
    obj = KINDS[kind].model_validate(minimal(kind))
    assert obj.kind == kind and obj.metadata.name == "minimal"
    assert obj.status is None


def test_backtest_defaults() -> None:
    spec = KINDS["Backtest"].model_validate(minimal("Backtest")).spec
    assert spec.data.resolved_sample() is not None and spec.data.region == "cn"
    assert spec.universe.resolved_market() == "all"
    assert spec.benchmark == "SYNIDX"
    assert spec.strategy.topk_dropout is None and spec.strategy.custom is None  # TopkDropout defaults apply
    assert spec.executor.frequency == "day"
    assert (spec.exchange.open_cost, spec.exchange.close_cost, spec.exchange.deal_price) == (
        0.0005,
        0.0015,
        "close",
    )
    assert spec.signal.model is not None and spec.signal.model.model.class_name == "LGBModel"
    assert spec.signal.model.handler.class_name == "Alpha158"
    assert spec.job.backoff_limit == 0 and spec.suspend is False


def test_training_defaults() -> None:
    spec = KINDS["TrainingJob"].model_validate(minimal("TrainingJob")).spec
    assert spec.model.class_name == "LGBModel" and spec.dataset.handler.class_name == "Alpha158"
    assert spec.ray.workers.replicas == 2 and spec.ray.workers.gpus_per_worker == 0
    assert spec.tune is None


def test_session_defaults_are_safe() -> None:
    spec = KINDS["LiveTradingSession"].model_validate(minimal("LiveTradingSession")).spec
    assert spec.mode == "paper" and spec.broker.type == "paper"  # never live by default
    assert spec.halted is False
    assert spec.strategy.signal_api is not None and spec.strategy.signal_api.port == 8080
    assert spec.journal.size == "1Gi"


def test_risk_policy_defaults() -> None:
    spec = KINDS["RiskPolicy"].model_validate(minimal("RiskPolicy")).spec
    assert spec.breakers.action == "halt" and spec.broker_disconnect.action == "reduceOnly"
    assert spec.timezone == "Asia/Shanghai" and spec.trading_windows is None


def test_sample_data_matches_examples_calendar() -> None:
    """The default sample covers the example's periods, so `kubequant run -f examples/…` needs no data."""
    spec = KINDS["Backtest"].model_validate(minimal("Backtest")).spec
    sample = spec.data.resolved_sample()
    assert sample is not None
    assert sample.start <= dt.date.fromisoformat(SEGMENTS["train"]["start"])
    assert sample.end >= dt.date.fromisoformat(SEGMENTS["test"]["end"])


# --------------------------------------------------------------------------- round trips


def round_trip_cases() -> list[tuple[str, dict[str, Any]]]:
    cases = [(f"minimal-{kind}", minimal(kind)) for kind in KINDS]
    for path in EXAMPLES:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                cases.append((f"{path.name}#{i}", doc))
    with_status = minimal("Backtest")
    with_status["metadata"].update(labels={"team": "alpha"}, generation=3, uid="0f1e", resourceVersion="42")
    with_status["status"] = {
        "observedGeneration": 3,
        "phase": "Succeeded",
        "conditions": [
            {
                "type": "Succeeded",
                "status": "True",
                "reason": "JobComplete",
                "message": "done",
                "lastTransitionTime": "2024-05-01T10:00:00Z",
                "observedGeneration": 3,
            }
        ],
        "results": {"annualizedReturn": 0.12, "sharpe": 1.4, "maxDrawdown": -0.08, "trades": 1200},
    }
    cases.append(("backtest-with-status", with_status))
    session = minimal("LiveTradingSession")
    session["spec"].update(
        mode="live",
        broker={"type": "alpaca", "credentialsSecretRef": {"name": "alpaca-keys"}},
        strategy={"scheduled": {"signal": {"modelRef": {"name": "lgb"}}}, "signalApi": {"port": 9000}},
        pod={"resources": {"limits": {"cpu": 2, "memory": "4Gi", "nvidia.com/gpu": 1}}},
        journal={"size": 5368709120},
    )
    cases.append(("session-live", session))
    training = minimal("TrainingJob")
    training["spec"]["tune"] = {
        "metric": "valid_loss",
        "mode": "min",
        "searchSpace": {
            "learning_rate": {"distribution": "loguniform", "low": 0.001, "high": 0.3},
            "num_leaves": {"distribution": "choice", "values": [31, 63]},
            "boosting": {"distribution": "choice", "categories": ["gbdt", "dart"]},
        },
    }
    cases.append(("training-tune", training))
    return cases


ROUND_TRIPS = round_trip_cases()


@pytest.mark.parametrize("doc", [d for _, d in ROUND_TRIPS], ids=[i for i, _ in ROUND_TRIPS])
def test_round_trip_through_to_manifest_is_stable(doc: dict[str, Any]) -> None:
    cls = KINDS[doc["kind"]]
    first = cls.model_validate(doc)
    written = first.to_manifest()
    # What `to_manifest` writes must survive YAML (dates as strings, no Python objects).
    reread = yaml.safe_load(yaml.safe_dump(written))
    second = cls.model_validate(reread)
    assert second == first
    assert second.to_manifest() == written
    assert written["apiVersion"] == "kubequant.io/v1alpha1" and written["kind"] == doc["kind"]


def test_to_manifest_writes_camel_case_and_leaves_out_unset_fields() -> None:
    written = KINDS["Backtest"].model_validate(minimal("Backtest")).to_manifest()
    assert "status" not in written
    assert "topkDropout" not in written["spec"]["strategy"]
    assert written["spec"]["exchange"]["openCost"] == 0.0005
    assert written["spec"]["signal"]["model"]["model"]["class"] == "LGBModel"
    assert "model_ref" not in written["spec"]["signal"] and "modelRef" not in written["spec"]["signal"]


def test_server_written_metadata_is_kept() -> None:
    doc = minimal("RiskPolicy")
    doc["metadata"].update(resourceVersion="7", creationTimestamp="2024-01-01T00:00:00Z")
    written = KINDS["RiskPolicy"].model_validate(doc).to_manifest()
    assert written["metadata"]["resourceVersion"] == "7"
    assert written["metadata"]["creationTimestamp"] == "2024-01-01T00:00:00Z"


# --------------------------------------------------------------------------- rules


def test_there_are_rules() -> None:
    assert len(RULES) >= 20


@pytest.mark.parametrize("owner,rule", RULES, ids=[f"{o}:{r.field or 'one-of'}" for o, r in RULES])
def test_rule_has_cel_a_python_twin_and_a_fix(owner: str, rule: Rule) -> None:
    assert rule.cel.strip(), f"{owner}: a rule without CEL is invisible to the API server"
    assert rule.cel.count("(") == rule.cel.count(")"), f"{owner}: unbalanced CEL {rule.cel!r}"
    if not rule.transition:
        assert rule.check is not None, f"{owner}: {rule.cel!r} has no Python check for `kubequant validate`"
    what, sep, fix = rule.message.partition("; ")
    assert sep and what and fix, f"{owner}: message {rule.message!r} must be '<what is wrong>; <the fix>'"
    assert fix.split()[0] in FIX_VERBS, (
        f"{owner}: the fix {fix!r} should start with a verb ({sorted(FIX_VERBS)})"
    )


@pytest.mark.parametrize("model", all_models(), ids=lambda m: m.__name__)
def test_rule_fields_exist(model: type[pydantic.BaseModel]) -> None:
    """A rule blames a field path that exists on its model (the CRD's fieldPath, the CLI's path)."""
    for rule in getattr(model, "__rules__", ()):
        if not rule.field:
            continue
        current: type[pydantic.BaseModel] | None = model
        for part in rule.field.split("."):
            assert current is not None, f"{model.__name__}: {rule.field!r} goes below a scalar"
            by_alias = {(info.alias or name): info for name, info in current.model_fields.items()}
            assert part in by_alias, (
                f"{model.__name__}: {rule.field!r}: no field {part!r} on {current.__name__}"
            )
            subs = models_in(by_alias[part].annotation)
            current = subs[0] if subs else None


# --------------------------------------------------------------------------- descriptions


def test_every_field_has_a_description() -> None:
    """Descriptions are what `kubectl explain` shows."""
    missing = [
        f"{model.__module__}.{model.__name__}.{name}"
        for model in all_models()
        for name, info in model.model_fields.items()
        if not (info.description and info.description.strip())
    ]
    assert not missing, "fields without a description:\n  " + "\n  ".join(missing)


def test_every_model_has_a_docstring() -> None:
    missing = [m.__name__ for m in all_models() if not (m.__doc__ and m.__doc__.strip())]
    assert not missing, missing


# --------------------------------------------------------------------------- status


def status_models(cls: type[Resource]) -> list[type[pydantic.BaseModel]]:
    status = cls.model_fields["status"]
    (root,) = models_in(status.annotation)
    return reachable_models(root)


@pytest.mark.parametrize("kind", list(KINDS))
def test_status_is_optional_all_the_way_down(kind: str) -> None:
    """Only the operator writes status, in pieces: no status field may be required.

    Condition and ChildReference are the exceptions: an entry of ``conditions`` is complete by the
    API conventions, and the operator records each child whole (kind, name, uid).
    """
    cls = KINDS[kind]
    assert not cls.model_fields["status"].is_required()
    required = [
        f"{model.__name__}.{name}"
        for model in status_models(cls)
        if model not in (Condition, ChildReference)
        for name, info in model.model_fields.items()
        if info.is_required()
    ]
    assert not required, f"required status fields: {required}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_empty_status_is_valid(kind: str) -> None:
    doc = minimal(kind)
    doc["status"] = {}
    obj = KINDS[kind].model_validate(doc)
    assert obj.to_manifest()["status"] == {}


def test_every_model_is_an_api_model() -> None:
    """Every model refuses unknown fields and speaks camelCase (the ApiModel config)."""
    for model in all_models():
        assert issubclass(model, ApiModel), model
        if model.__name__ != "ObjectMeta":  # keeps server-written metadata it does not model
            assert model.model_config.get("extra") == "forbid", model
