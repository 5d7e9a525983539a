"""A LiveTradingSession's status from its trading pod and what the runtime reports.

Two writers share the status, each its own fields: the runtime in the pod writes what it knows
(``tradingState``, ``haltReason``, ``brokerConnected``, equity and PnL, the day's counts,
``lastHeartbeatTime``; workloads/trading/node/cluster.py); the operator writes the rest (phase,
conditions, message, ``podName``, ``children``), computed here from the pod and those fields.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from kubequant.api.live import SessionPhase, TradingState
from kubequant.operator.status.conditions import not_accepted, set_conditions
from kubequant.operator.status.pods import container_state, failure_message
from kubequant.redaction import redact

# The runtime's exit code when recovery fails closed (workloads/trading/node/runtime.py EXIT_HALTED).
EXIT_RECOVERY_FAILED = 3
# A runtime that has not reported for this long is silent: it writes a change within seconds and an
# unchanged status every minute (--heartbeat-seconds), so three missed heartbeats.
STALE_SECONDS = 180
PENDING, RECONCILING, TRADING = (
    SessionPhase.PENDING.value,
    SessionPhase.RECONCILING.value,
    SessionPhase.TRADING.value,
)
HALTED, FAILED = SessionPhase.HALTED.value, SessionPhase.FAILED.value


def _age(stamp: str | None, now: dt.datetime) -> float | None:
    if not stamp:
        return None
    try:
        then = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (now - then).total_seconds()


def _reported_since(previous: Mapping[str, Any], since: str | None) -> bool:
    """Whether the runtime reported (a heartbeat) after the running container started."""
    if not since or not previous.get("lastHeartbeatTime"):
        return False
    try:
        started = dt.datetime.fromisoformat(since.replace("Z", "+00:00"))
        beat = dt.datetime.fromisoformat(str(previous["lastHeartbeatTime"]).replace("Z", "+00:00"))
    except ValueError:
        return False
    return beat > started


def _pod_waits(reason: str, message: str, secrets: Sequence[tuple[str, str]]) -> str:
    text = f"the trading pod is waiting ({reason or 'Pending'})"
    if message:
        text += f": {message}"
    if secrets and reason in ("", "ContainerCreating", "CreateContainerConfigError"):
        named = ", ".join(f"{name} ({field})" for field, name in secrets)
        text += f"; it mounts the Secrets {named}: a missing Secret or key keeps it here"
    return redact(text)


def session_status(
    generation: int | None,
    halted: bool,
    stateful_set: str,
    pod_name: str,
    pod: dict[str, Any] | None,
    previous: Mapping[str, Any] | None,
    now: dt.datetime,
    secrets: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The operator's part of the status: phase, conditions, message, podName.

    ``halted`` is spec.halted; ``previous`` holds what the runtime reported; ``secrets`` the
    (spec field, Secret name) pairs the pod mounts, named when the pod waits for its volumes.
    """
    previous = previous or {}
    state = container_state(pod)
    reported = previous.get("tradingState")
    accepted = ("Accepted", "True", "StatefulSetCreated", f"StatefulSet {stateful_set} runs the trading pod")
    degraded = ("Degraded", "False", "AsExpected", "")
    term = state.termination
    if not state.exists:
        phase, ready = PENDING, ("PodNotCreated", f"waiting for the StatefulSet to create pod {pod_name}")
    elif state.terminating:
        phase, ready = PENDING, ("PodTerminating", f"pod {pod_name} is stopping; the StatefulSet replaces it")
    elif term is not None and term.exit_code == EXIT_RECOVERY_FAILED and not state.running:
        why = failure_message(
            term,
            "recovery failed closed (exit code 3): the journal and the broker disagree, or an empty journal "
            "met an account in use; see the pod's log, then `kubequant trading adopt` or `trading resume`",
        )
        phase, ready = FAILED, ("RecoveryFailed", why)
        degraded = ("Degraded", "True", "RecoveryFailed", why)
    elif state.waiting_reason in ("CrashLoopBackOff", "Error", "RunContainerError"):
        why = failure_message(term, f"the trading runtime keeps failing ({state.waiting_reason})")
        phase, ready = FAILED, (state.waiting_reason, why)
        degraded = ("Degraded", "True", "CrashLoopBackOff", why)
    elif not state.running:
        phase, ready = (
            PENDING,
            (
                state.waiting_reason or "PodPending",
                _pod_waits(state.waiting_reason, state.waiting_message, secrets),
            ),
        )
    elif not state.ready and _reported_since(previous, state.running_since):
        # This container's runtime was up and reporting; now its readiness probe fails (a hang, a stopped
        # process, a blocked event loop, or a journal that failed closed).
        phase, ready = (
            RECONCILING,
            (
                "NotReady",
                f"pod {pod_name} fails its readiness probe (GET /readyz) after it had started: the runtime "
                "is hung or failed closed; the liveness probe (GET /healthz) restarts a hung one",
            ),
        )
    elif not state.ready:
        phase, ready = (
            RECONCILING,
            (
                "Recovering",
                "the runtime is starting: journal replay and reconciliation with the broker before it trades",
            ),
        )
    else:
        ready = ("PodReady", f"pod {pod_name} is ready")
        if reported is None:  # ready, but the runtime has not said what it does yet
            phase = RECONCILING
        else:
            phase = HALTED if reported == TradingState.HALTED.value else TRADING
        age = _age(previous.get("lastHeartbeatTime"), now)
        if previous.get("brokerConnected") is False:
            degraded = (
                "Degraded",
                "True",
                "BrokerDisconnected",
                "the runtime has lost its broker connection",
            )
        elif age is not None and age > STALE_SECONDS:
            degraded = (
                "Degraded",
                "True",
                "RuntimeSilent",
                f"the runtime has not reported for {int(age)} s (it reports at least every minute)",
            )
    is_ready = ready[0] == "PodReady"
    if is_ready and reported in (TradingState.ACTIVE.value, TradingState.REDUCING.value):
        trading = ("Trading", "True", "Active" if reported == TradingState.ACTIVE.value else "ReduceOnly", "")
    elif is_ready and reported is None:
        trading = ("Trading", "False", "NotReported", "the runtime has not reported its trading state yet")
    else:
        trading = ("Trading", "False", "Halted" if reported == TradingState.HALTED.value else ready[0], "")
    halt_reason = redact(str(previous.get("haltReason") or ""))
    if is_ready and reported == TradingState.HALTED.value:
        cause = "KillSwitch" if halted and "kill switch" in halt_reason else "Halted"
        halted_cond = ("Halted", "True", cause, halt_reason or "the runtime is halted")
    elif halted:
        halted_cond = (
            "Halted",
            "Unknown",
            "KillSwitchPending",
            "spec.halted is set; the runtime has not confirmed it",
        )
    else:
        halted_cond = ("Halted", "False", "NotHalted", "")
    conds = set_conditions(
        previous.get("conditions"),
        (accepted, ("Ready", "True" if is_ready else "False", *ready), trading, halted_cond, degraded),
        generation,
        now,
    )
    message = degraded[3] if degraded[1] == "True" else ready[1]
    if halted_cond[1] == "True":
        message = f"halted: {halted_cond[3]}"
    return {
        "observedGeneration": generation,
        "phase": phase,
        "conditions": conds,
        "message": message[:4096],
        "podName": pod_name,
    }


def rejected_status(
    generation: int | None, reason: str, message: str, previous: dict[str, Any] | None, now: dt.datetime
) -> dict[str, Any]:
    """Status of a session the operator will not run as it is (until its spec changes)."""
    others = (("Ready", "False"), ("Trading", "False"))
    return not_accepted(generation, reason, message, previous, now, FAILED, others)


def waiting_status(
    generation: int | None, reason: str, message: str, previous: dict[str, Any] | None, now: dt.datetime
) -> dict[str, Any]:
    """Status of a session waiting for something (its RiskPolicy, an account another session holds)."""
    others = (("Ready", "False"), ("Trading", "False"))
    return not_accepted(generation, reason, message, previous, now, PENDING, others)
