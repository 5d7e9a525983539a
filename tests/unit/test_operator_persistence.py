"""kopf's bookkeeping lives in status.kopf, so a reconcile costs one status PATCH and no object PATCH;
objects an older operator handled (annotations) are read, never written again."""

from __future__ import annotations

import json
from typing import Any

import kopf
import pytest

from kubequant.api.backtest import BacktestStatus
from kubequant.operator import persistence
from kubequant.version import API_GROUP

pytestmark = pytest.mark.unit

SPEC = {"period": {"start": "2022-01-04", "end": "2022-06-30"}, "suspend": False}
LEGACY_KEY = f"{API_GROUP}/last-handled-configuration"


def body(annotations: dict[str, str] | None = None, status: dict[str, Any] | None = None) -> kopf.Body:
    raw: dict[str, Any] = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "metadata": {"name": "bt", "namespace": "ns", "uid": "u", "annotations": annotations or {}},
        "spec": SPEC,
    }
    if status is not None:
        raw["status"] = status
    return kopf.Body(raw)


def test_the_last_handled_configuration_is_written_to_status_only() -> None:
    storage = persistence.diffbase_storage()
    new = body()
    essence = storage.build(body=new)
    patch = kopf.Patch()
    storage.store(body=new, patch=patch, essence=essence)
    assert set(patch) == {"status"}, patch  # no metadata: no PATCH of the object itself
    stored = patch["status"]["kopf"]["last-handled-configuration"]
    assert json.loads(stored) == {"spec": SPEC}
    # ... and read back from there.
    assert storage.fetch(body=body(status={"kopf": {"last-handled-configuration": stored}})) == {"spec": SPEC}


def test_an_object_an_older_operator_handled_is_not_new() -> None:
    """The annotation an older operator wrote is read (no second create), its keys are no change of the
    object, and the next write goes to status only."""
    storage = persistence.diffbase_storage()
    old_essence = {"spec": SPEC}
    legacy = body(
        annotations={
            LEGACY_KEY: json.dumps(old_essence) + "\n",
            f"{API_GROUP}/kopf-managed": "yes",
        }
    )
    assert storage.fetch(body=legacy) == old_essence
    assert storage.build(body=legacy) == old_essence  # nothing changed since: no update handler fires
    patch = kopf.Patch()
    storage.store(body=legacy, patch=patch, essence=storage.build(body=legacy))
    assert "metadata" not in patch and "last-handled-configuration" in patch["status"]["kopf"]


def test_status_wins_over_the_older_annotation() -> None:
    storage = persistence.diffbase_storage()
    now = {"spec": {**SPEC, "suspend": True}}
    both = body(
        annotations={LEGACY_KEY: json.dumps({"spec": SPEC}), f"{API_GROUP}/kopf-managed": "yes"},
        status={"kopf": {"last-handled-configuration": json.dumps(now)}},
    )
    assert storage.fetch(body=both) == now


def test_handler_progress_goes_to_status_and_older_progress_is_read_and_purged() -> None:
    storage = persistence.progress_storage()
    key = kopf.HandlerId("reconcile_backtest")  # type: ignore[attr-defined]
    record = {"started": "2026-12-03T18:00:00.000000+00:00", "retries": 1, "success": False}
    new = body()
    patch = kopf.Patch()
    storage.store(key=key, record=record, body=new, patch=patch)  # type: ignore[arg-type]
    assert set(patch) == {"status"} and patch["status"]["kopf"]["progress"][key]["retries"] == 1
    touched = kopf.Patch()
    storage.touch(body=new, patch=touched, value="x")
    assert set(touched) == {"status"}

    legacy_key = f"{API_GROUP}/{key}"
    legacy = body(annotations={legacy_key: json.dumps(record), f"{API_GROUP}/kopf-managed": "yes"})
    assert storage.fetch(key=key, body=legacy) == record
    purged = kopf.Patch()
    storage.purge(key=key, body=legacy, patch=purged)
    assert purged["metadata"]["annotations"] == {legacy_key: None}  # cleared once, when the handler is done
    clean = kopf.Patch()
    storage.purge(key=key, body=new, patch=clean)
    assert "metadata" not in clean


def test_the_status_models_accept_kopf_s_stanza() -> None:
    """Status is parsed by the models (extra fields forbidden): status.kopf must be one of theirs, and
    the CRDs keep its unknown fields (else the API server prunes it and every event looks new)."""
    status = BacktestStatus.model_validate(
        {"phase": "Pending", "kopf": {"progress": {"h": {"retries": 1}}, "last-handled-configuration": "{}"}}
    )
    assert status.kopf == {"progress": {"h": {"retries": 1}}, "last-handled-configuration": "{}"}
    schema = BacktestStatus.model_json_schema(by_alias=True)
    assert schema["properties"]["kopf"].get("x-kubernetes-preserve-unknown-fields") is True
