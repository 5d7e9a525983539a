"""Loading a RiskPolicy from its file, and picking up a changed file without a restart."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pydantic
import yaml
from prometheus_client import Counter

from kubequant.api.risk import RiskPolicy, RiskPolicySpec
from kubequant.errors import ValidationError
from kubequant.workloads.trading.risk.engine import RiskEngine

log = logging.getLogger(__name__)

POLICY_RELOADS = Counter(
    "kubequant_risk_policy_reloads_total", "Risk policy file reloads, by result.", ["result"]
)


def parse_policy(body: Any, source: str = "<policy>") -> RiskPolicySpec:
    """A RiskPolicySpec from a RiskPolicy manifest or from a bare spec mapping."""
    if isinstance(body, dict) and body.get("kind") == "RiskPolicy":
        try:
            return RiskPolicy.model_validate(body).spec
        except pydantic.ValidationError as err:
            raise ValidationError(str(err).splitlines()[0], where=source, fix="fix the RiskPolicy") from err
    try:
        return RiskPolicySpec.model_validate(body or {})
    except pydantic.ValidationError as err:
        raise ValidationError(str(err).splitlines()[0], where=source, fix="fix the policy spec") from err


def load_policy(path: Path) -> RiskPolicySpec:
    """Read a policy file (YAML or JSON); the first RiskPolicy document of a multi-document file wins."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as err:
        raise ValidationError(f"cannot read the policy: {err}", where=str(path)) from err
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "RiskPolicy":
            return parse_policy(doc, str(path))
    bare = [d for d in docs if not (isinstance(d, dict) and "kind" in d)]
    if docs and not bare:
        raise ValidationError("no RiskPolicy in the file", where=str(path), fix="add a RiskPolicy document")
    return parse_policy(bare[0] if bare else {}, str(path))


class FileWatcher:
    """Notices when a file's modification time or size changes (a ConfigMap update, an edit)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def changed(self) -> bool:
        """True once for each change since the last call (a missing file is no change)."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return False
        self._seen = stamp
        return True


class PolicyWatcher(FileWatcher):
    """Reloads the policy file into the engine when it changes; a bad file keeps the old policy."""

    def __init__(self, path: Path, engine: RiskEngine) -> None:
        super().__init__(path)
        self.engine = engine

    def changed_policy(self) -> RiskPolicySpec | None:
        """The policy in the file if the file changed since the last call and holds a valid one, else None."""
        if not self.changed():
            return None
        try:
            policy = load_policy(self.path)
        except ValidationError as err:
            POLICY_RELOADS.labels("error").inc()
            log.error("keeping the current risk policy: %s", err.one_line())
            return None
        POLICY_RELOADS.labels("ok").inc()
        log.info("risk policy reloaded from %s", self.path)
        return policy

    def poll(self) -> bool:
        """Reload if the file changed; True when a new policy took effect (not journaled: see control.py)."""
        policy = self.changed_policy()
        if policy is None:
            return False
        self.engine.update_policy(policy)
        return True

    async def run(self, interval: float = 1.0) -> None:
        """Poll forever (cancel the task to stop)."""
        while True:
            self.poll()
            await asyncio.sleep(interval)
