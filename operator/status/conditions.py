"""The conditions core every kind's status shares: conditions, timestamps, refused and waiting states."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

# Display order of condition types in status (then alphabetical).
ORDER = {
    "Accepted": 0,
    "Running": 1,
    "Succeeded": 2,
    "Failed": 3,
    "Ready": 4,
    "Trading": 5,
    "Halted": 6,
    "Degraded": 7,
}


def timestamp(moment: dt.datetime) -> str:
    """RFC 3339 in UTC with second precision, as the API server writes times."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Conditions with one set; lastTransitionTime moves only when the status changes."""
    out = [dict(c) for c in conditions or [] if c.get("type") != type_]
    previous = next((c for c in conditions or [] if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != status
    condition = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": timestamp(now) if changed else previous["lastTransitionTime"],  # type: ignore[index]
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    out.append(condition)
    return sorted(out, key=lambda c: (ORDER.get(c["type"], 99), c["type"]))


def set_conditions(
    conditions: list[dict[str, Any]] | None,
    values: Iterable[tuple[str, str, str, str]],
    generation: int | None,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Several conditions at once, each (type, status, reason, message)."""
    out = conditions
    for type_, status, reason, message in values:
        out = set_condition(out, type_, status, reason, message, generation, now)
    return out or []


def condition(status: Mapping[str, Any] | None, type_: str) -> dict[str, Any] | None:
    """The condition of ``type_`` in a status, or None."""
    return next((c for c in (status or {}).get("conditions") or [] if c.get("type") == type_), None)


# Condition types whose True is trouble; of the others only a refusal (Accepted False) is.
TROUBLE_WHEN_TRUE = frozenset({"Failed", "Halted", "Degraded"})


def is_trouble(cond: Mapping[str, Any]) -> bool:
    """Whether a condition says something is wrong (its Event is a Warning)."""
    if cond.get("type") in TROUBLE_WHEN_TRUE:
        return cond.get("status") == "True"
    return cond.get("type") == "Accepted" and cond.get("status") == "False"


def transitions(
    previous: Iterable[Mapping[str, Any]] | None, new: Iterable[Mapping[str, Any]] | None
) -> list[Mapping[str, Any]]:
    """The conditions of ``new`` that changed status or reason since ``previous``.

    A condition that first appears counts only when it is trouble: an object's first status sets
    every condition ("not ready yet", "not halted"), and that is no news.
    """
    before = {c.get("type"): c for c in previous or []}
    out = []
    for cond in new or []:
        old = before.get(cond.get("type"))
        if old is None:
            if is_trouble(cond):
                out.append(cond)
        elif (old.get("status"), old.get("reason")) != (cond.get("status"), cond.get("reason")):
            out.append(cond)
    return out


def transition_events(
    previous: Iterable[Mapping[str, Any]] | None, new: Iterable[Mapping[str, Any]] | None
) -> list[tuple[str, str, str]]:
    """One Event (type, reason, message) per condition transition, e.g. ``("Warning",
    "BrokerDisconnected", "Degraded=True: ...")``; conditions that changed to the same reason and
    message (a refusal sets Accepted, Ready and Trading together) share one Event."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for cond in transitions(previous, new):
        groups.setdefault((str(cond.get("reason") or ""), str(cond.get("message") or "")), []).append(cond)
    events = []
    for (reason, message), conds in groups.items():
        what = ", ".join(f"{c.get('type')}={c.get('status')}" for c in conds)
        type_ = "Warning" if any(is_trouble(c) for c in conds) else "Normal"
        events.append((type_, reason or "Unknown", f"{what}: {message}" if message else what))
    return events


def unchanged(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` (a merge patch of status) would change nothing."""
    previous = previous or {}
    return all(previous.get(k) == v for k, v in new.items())


def not_accepted(
    generation: int | None,
    reason: str,
    message: str,
    previous: Mapping[str, Any] | None,
    now: dt.datetime,
    phase: str,
    others: Iterable[tuple[str, str]],
) -> dict[str, Any]:
    """Status of an object the operator does not run: Accepted False, and ``others`` (type, status)
    with the same reason and message."""
    conds = set_condition(
        (previous or {}).get("conditions"), "Accepted", "False", reason, message, generation, now
    )
    conds = set_conditions(conds, ((t, s, reason, message) for t, s in others), generation, now)
    return {"observedGeneration": generation, "phase": phase, "conditions": conds, "message": message}


def run_rejected_status(
    generation: int | None, reason: str, message: str, previous: Mapping[str, Any] | None, now: dt.datetime
) -> dict[str, Any]:
    """Status of a run (a Backtest, a TrainingJob) the operator will not start: Accepted False and
    Failed True, phase Failed."""
    others = (("Running", "False"), ("Succeeded", "False"), ("Failed", "True"))
    return not_accepted(generation, reason, message, previous, now, "Failed", others)


def run_waiting_status(
    generation: int | None, reason: str, message: str, previous: Mapping[str, Any] | None, now: dt.datetime
) -> dict[str, Any]:
    """Status of a run waiting for a dependency (a volume, a model): Accepted False, phase Pending;
    the operator retries."""
    others = (("Running", "False"), ("Succeeded", "Unknown"), ("Failed", "False"))
    return not_accepted(generation, reason, message, previous, now, "Pending", others)


def run_conditions(
    conditions: list[dict[str, Any]] | None,
    phase: str,
    reason: str,
    message: str,
    generation: int | None,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Running, Succeeded and Failed of a run (a Backtest, a TrainingJob) in ``phase``: Running True
    only while running (reason "Finished" once succeeded), Succeeded/Failed True at the matching end,
    Succeeded Unknown while the outcome is open."""
    running = "True" if phase == "Running" else "False"
    conds = set_condition(
        conditions,
        "Running",
        running,
        reason if phase != "Succeeded" else "Finished",
        message,
        generation,
        now,
    )
    succeeded, failed = {"Succeeded": ("True", "False"), "Failed": ("False", "True")}.get(
        phase, ("Unknown", "False")
    )
    return set_conditions(
        conds,
        (("Succeeded", succeeded, reason, message), ("Failed", failed, reason, message)),
        generation,
        now,
    )
