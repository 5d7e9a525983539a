"""A RiskPolicy's status: the sessions that use it, and whether its deletion waits for them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from kubequant.operator.status.conditions import set_condition

MAX_NAMES = 1024  # RiskPolicyStatus.sessionNames' schema limit


def policy_status(
    generation: int | None,
    sessions: Sequence[str],
    previous: Mapping[str, Any] | None,
    now: dt.datetime,
    deleting: bool = False,
) -> dict[str, Any]:
    """The status for the sessions (names, in this namespace) that reference the policy."""
    names = sorted(set(sessions))
    if names:
        listed = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        message = f"used by {len(names)} session(s): {listed}"
        if deleting:
            message = f"deletion waits until no session uses it; {message}"
        cond = ("True", "DeletionBlocked" if deleting else "ReferencedBySessions", message)
    else:
        message = "no session uses this policy"
        cond = ("False", "NotReferenced", message)
    conds = set_condition((previous or {}).get("conditions"), "InUse", *cond, generation, now)
    return {
        "observedGeneration": generation,
        "sessions": len(names),
        "sessionNames": names[:MAX_NAMES],
        "conditions": conds,
        "message": message,
    }
