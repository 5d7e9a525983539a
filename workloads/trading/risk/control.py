"""Changes that reach a running session from outside: the kill switch and its RiskPolicy, journaled.

Both arrive while the runtime trades — through the API (workloads/trading/node/cluster.py: the pod
follows its own LiveTradingSession and RiskPolicy) or through the mounted files (the start-up copy,
which the kubelet refreshes about once a minute). Whichever comes first acts; the other then finds
nothing to change. Each change is journaled with where it came from and who made it, before it acts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from kubequant.api.risk import RiskPolicySpec
from kubequant.workloads.trading.execution.oms import OrderManager
from kubequant.workloads.trading.execution.reconcile import sync_risk_state
from kubequant.workloads.trading.model.events import EVENT_TYPES, Event
from kubequant.workloads.trading.risk.trading_state import KILL_SWITCH

log = logging.getLogger(__name__)
MAX_TEXT = 500


@dataclass(frozen=True, slots=True)
class KillSwitchSet(Event):
    """``spec.halted`` changed: on halts at once (open orders cancelled); off clears only the kill switch."""

    kind: ClassVar[str] = "KillSwitchSet"
    on: bool = False
    source: str = ""  # "api" (the session object) or "file" (the mounted session)
    by: str = ""  # the field manager that last wrote spec.halted (kubectl-patch, argocd-controller, ...)
    reason: str = ""  # the session's kubequant.io/halt-reason annotation, when set
    generation: int | None = None  # the session's metadata.generation


@dataclass(frozen=True, slots=True)
class RiskPolicyApplied(Event):
    """The risk engine uses this RiskPolicy from now on (at start, and on every change)."""

    kind: ClassVar[str] = "RiskPolicyApplied"
    name: str = ""
    generation: int | None = None
    digest: str = ""
    source: str = ""  # "start", "api" or "file"


# The journal decodes by kind; events.EXTENSION_MODULES names this module for every journal reader.
for _cls in (KillSwitchSet, RiskPolicyApplied):
    EVENT_TYPES.setdefault(_cls.kind, _cls)


def policy_digest(spec: RiskPolicySpec) -> str:
    """A digest of what a policy says (the same limits written differently digest the same)."""
    text = json.dumps(spec.to_manifest(), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _short(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


async def set_kill_switch(
    oms: OrderManager, on: bool, *, source: str, by: str = "", reason: str = "", generation: int | None = None
) -> bool:
    """Journal and apply a change of the kill switch; a halt cancels open orders. False when nothing changed.

    Switching it off clears the kill switch only: a latched breaker or a manual halt stays until an
    operator resumes (POST /v1/trading-state, `kubequant trading resume`).
    """
    if (KILL_SWITCH in oms.risk.conditions) == on:
        return False
    await oms.commit_async(KillSwitchSet(oms.clock.now(), on, source, _short(by), _short(reason), generation))
    oms.risk.set_kill_switch(on)
    log.warning(
        "kill switch %s (%s%s)%s",
        "ON" if on else "off",
        source,
        f", by {by}" if by else "",
        f": {reason}" if reason else "",
    )
    await sync_risk_state(oms)  # journals the new trading state; halted: cancels whatever is open
    return True


class PolicyTracker:
    """The RiskPolicy the risk engine uses, and what journaling a new one takes."""

    def __init__(self, oms: OrderManager, name: str, generation: int | None = None) -> None:
        self.oms = oms
        self.name = name
        self.generation = generation
        self.digest = policy_digest(oms.risk.policy)

    async def started(self) -> None:
        """Journal the policy the runtime started with."""
        await self.oms.commit_async(
            RiskPolicyApplied(self.oms.clock.now(), self.name, self.generation, self.digest, "start")
        )

    async def apply(
        self, spec: RiskPolicySpec, *, source: str, generation: int | None = None, name: str | None = None
    ) -> bool:
        """Journal and use ``spec`` if it differs from the current policy; False when it does not."""
        digest = policy_digest(spec)
        if digest == self.digest:
            if generation is not None and (self.generation is None or generation > self.generation):
                self.generation = generation  # the same limits under a newer generation (metadata edits)
            return False
        name = name or self.name
        await self.oms.commit_async(RiskPolicyApplied(self.oms.clock.now(), name, generation, digest, source))
        self.oms.risk.update_policy(spec)
        self.digest, self.generation, self.name = digest, generation, name
        log.info("risk policy %s generation %s applied (%s)", name, generation, source)
        return True


def document_generation(doc: Any) -> int | None:
    """metadata.generation of a manifest, if it has one."""
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    value = meta.get("generation") if isinstance(meta, dict) else None
    return value if isinstance(value, int) else None
