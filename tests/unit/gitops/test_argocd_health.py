"""The Argo CD health checks in argocd/, run for real on Lua 5.1 as Argo CD runs them (argocd_lua.py),
over every object of every health_test.yaml, checking what Argo CD's own harness checks: the status
and the message. The objects' status is what the operator's status functions write (kubequant.argocd_cases;
test_argocd_cm.py fails when the files are stale)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from argocd_lua import INVALID_STATUS, Health, LuaScriptError, load_object, run_health

from kubequant import argocd_cases, gitops
from kubequant.api.backtest import Backtest, BacktestPhase
from kubequant.api.live import LiveTradingSession, SessionPhase
from kubequant.api.resource import Resource
from kubequant.api.risk import RiskPolicy
from kubequant.api.training import TrainingJob, TrainingPhase

pytestmark = pytest.mark.unit

FOLDER = gitops.ARGOCD_DIR / gitops.CUSTOMIZATIONS
MODELS: dict[str, type[Resource]] = {
    "Backtest": Backtest,
    "TrainingJob": TrainingJob,
    "LiveTradingSession": LiveTradingSession,
    "RiskPolicy": RiskPolicy,
}


def health_tests() -> list[tuple[str, Path, Health]]:
    """(kind, testdata file, expected health) of every entry of every health_test.yaml."""
    out = []
    for kind in gitops.KINDS:
        spec = yaml.safe_load((FOLDER / kind / "health_test.yaml").read_text())
        for test in spec["tests"]:
            expected = test["healthStatus"]
            health = Health(expected["status"], expected.get("message", ""))
            out.append((kind, FOLDER / kind / test["inputPath"], health))
    return out


CASES = health_tests()


def test_the_layout_is_argo_cds_own() -> None:
    # resource_customizations/<group>/<kind>/{health.lua, health_test.yaml, testdata/}; every testdata
    # file is some test's input and every input exists.
    assert sorted(p.name for p in FOLDER.iterdir()) == sorted(gitops.KINDS)
    for kind in gitops.KINDS:
        folder = FOLDER / kind
        assert (folder / "health.lua").is_file()
        inputs = {path for k, path, _ in CASES if k == kind}
        assert inputs == set((folder / "testdata").glob("*.yaml")), kind
        assert len(inputs) >= 5, kind


@pytest.mark.parametrize(("kind", "path", "expected"), CASES, ids=[f"{k}/{p.name}" for k, p, _ in CASES])
def test_health_script_gives_the_expected_health(kind: str, path: Path, expected: Health) -> None:
    obj = load_object(path)
    assert obj["kind"] == kind
    assert run_health(gitops.health_script(kind), obj) == expected


def phases(kind: str) -> dict[str, set[str]]:
    """status.phase of the generated objects → the health statuses expected for them."""
    out: dict[str, set[str]] = {}
    for case in argocd_cases.CASES[kind]():
        phase = (case.obj.get("status") or {}).get("phase")
        stale = case.obj["metadata"]["generation"] != (case.obj.get("status") or {}).get("observedGeneration")
        if phase is not None and not stale:
            out.setdefault(phase, set()).add(case.status)
    return out


@pytest.mark.parametrize(("kind", "enum"), [("Backtest", BacktestPhase), ("TrainingJob", TrainingPhase)])
def test_run_phases_map_as_argo_cd_users_expect(kind: str, enum: type[BacktestPhase | TrainingPhase]) -> None:
    seen = phases(kind)
    # Every phase of the API has a case: a new phase fails here until the Lua and the cases know it.
    assert set(enum) <= set(seen), f"phases without a case: {set(enum) - set(seen)}"
    assert seen["Succeeded"] == {"Healthy"}
    assert seen["Failed"] == {"Degraded"}
    assert seen["Running"] == {"Progressing"}
    assert seen["Pending"] == {"Progressing"}
    assert seen["Suspended"] == {"Suspended"}


def test_session_phases_map_as_argo_cd_users_expect() -> None:
    seen = phases("LiveTradingSession")
    assert set(SessionPhase) <= set(seen), f"phases without a case: {set(SessionPhase) - set(seen)}"
    # Degraded: broker lost, runtime silent; Progressing: spec.halted set, the runtime not halted yet.
    assert seen["Trading"] == {"Healthy", "Degraded", "Progressing"}
    assert seen["Halted"] == {"Degraded"}
    assert seen["Failed"] == {"Degraded"}
    assert seen["Pending"] == {"Progressing"}
    assert seen["Reconciling"] == {"Progressing"}


def session_case(name: str) -> argocd_cases.HealthCase:
    return next(c for c in argocd_cases.session_cases() if c.name == name)


def test_a_halted_session_is_degraded_with_its_halt_reason() -> None:
    case = session_case("degraded_halted_by_breaker")
    reason = case.obj["status"]["haltReason"]
    health = run_health(gitops.health_script("LiveTradingSession"), case.obj)
    assert health.status == "Degraded" and reason in health.message


def test_a_failed_recovery_is_degraded() -> None:
    case = session_case("degraded_recovery_failed")
    degraded = next(c for c in case.obj["status"]["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RecoveryFailed")
    health = run_health(gitops.health_script("LiveTradingSession"), case.obj)
    assert health == Health("Degraded", f"RecoveryFailed: {degraded['message']}")


@pytest.mark.parametrize("kind", gitops.KINDS)
def test_a_status_older_than_the_spec_is_progressing(kind: str) -> None:
    # Whatever the old status said (Healthy, Degraded...), a spec the operator has not seen is news.
    for case in argocd_cases.CASES[kind]():
        if case.obj.get("status") and case.name != "unknown_phase":
            obj: dict[str, Any] = {**case.obj, "metadata": {**case.obj["metadata"], "generation": 7}}
            health = run_health(gitops.health_script(kind), obj)
            assert health == Health(
                "Progressing", "Waiting for the kubequant operator to observe generation 7"
            )


@pytest.mark.parametrize("kind", gitops.KINDS)
def test_the_generated_objects_are_valid_resources(kind: str) -> None:
    # Spec and status pass the API models (the CRDs' source): the status is one the API server stores.
    for case in argocd_cases.CASES[kind]():
        if case.name == "unknown_phase":  # a phase from a later API: today's model refuses it
            with pytest.raises(ValueError, match="phase"):
                MODELS[kind].model_validate(case.obj)
        else:
            MODELS[kind].model_validate(case.obj)


# --------------------------------------------------------------------------- the emulation itself


def test_the_sandbox_has_argo_cds_libraries_only() -> None:
    # argocd-cm checks run without the open libraries: no string, math, io; strings have no methods.
    for script in (
        'return {status = string.format("%s", "Healthy")}',
        'return {status = ("healthy"):upper()}',
        "return {status = math.floor(1) and 'Healthy'}",
        "io.write('x') return {status = 'Healthy'}",
    ):
        with pytest.raises(LuaScriptError):
            run_health(script, {})
    assert run_health("return {status = tostring(os.time() > 0 and 'Healthy')}", {}) == Health("Healthy")
    assert run_health("local t = {} table.insert(t, 'Degraded') return {status = t[1]}", {}) == Health(
        "Degraded"
    )


def test_argo_cds_answers_to_bad_returns() -> None:
    assert run_health('return {status = "Fine"}', {}) == Health("Unknown", INVALID_STATUS)
    with pytest.raises(LuaScriptError, match="table"):
        run_health("return 'Healthy'", {})
    with pytest.raises(LuaScriptError, match="message"):
        run_health('return {status = "Healthy", message = 3}', {})


def test_obj_is_the_object_as_tables_with_nulls_gone() -> None:
    script = (
        "if obj.status.gone ~= nil then return {status = 'Degraded'} end "
        "return {status = 'Healthy', message = obj.status.items[2] .. #obj.status.items .. obj.metadata.generation}"
    )
    obj = {"metadata": {"generation": 3}, "status": {"gone": None, "items": ["a", "b"]}}
    assert run_health(script, obj) == Health("Healthy", "b23")
