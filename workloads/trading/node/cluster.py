"""The trading pod's link to the Kubernetes API: it follows its own session and RiskPolicy, and reports.

On a cluster the operator gives the pod a ServiceAccount whose Role allows exactly this, by name:
get/list/watch its own LiveTradingSession (the kill switch, ``spec.halted``) and its RiskPolicy
(live limits), and patch its own status. So a kill switch acts within a second of
``kubectl patch`` — also while the operator is down — instead of after the kubelet's ConfigMap
refresh (about a minute); the mounted ConfigMap stays the copy a restart begins from.

The runtime writes its part of the status (trading state, halt reason, broker connection, equity,
PnL, the day's counts, ``lastHeartbeatTime``); the operator writes the rest (phase, conditions). A
change of the trading state is written at once, other changes at most every ``status_seconds``,
an unchanged status only as a heartbeat every ``heartbeat_seconds``.

Plain HTTPS with aiohttp: the workloads import neither the Kubernetes client nor the operator.
Off the cluster (``kubequant run``, the tests' processes) none of this runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from kubequant.api.live import LiveTradingSessionStatus
from kubequant.errors import ConfigError, ValidationError
from kubequant.version import API_GROUP, API_VERSION
from kubequant.workloads.trading.execution.oms import OrderManager
from kubequant.workloads.trading.risk.control import PolicyTracker, set_kill_switch
from kubequant.workloads.trading.risk.policy import parse_policy

log = logging.getLogger(__name__)

# Why a session was halted, for the journal: `kubectl annotate lts NAME kubequant.io/halt-reason=...`.
HALT_REASON_ANNOTATION = f"{API_GROUP}/halt-reason"
# The operator's part of the status; the runtime writes every other field of LiveTradingSessionStatus.
OPERATOR_FIELDS = frozenset({"observedGeneration", "conditions", "message", "phase", "podName", "children"})
RUNTIME_FIELDS = tuple(
    key
    for key in (info.alias or name for name, info in LiveTradingSessionStatus.model_fields.items())
    if key not in OPERATOR_FIELDS
)
# Written at once when they change: the operator's Halted/Trading/Degraded conditions follow them.
STATE_FIELDS = ("tradingState", "haltReason", "brokerConnected")
HEARTBEAT = "lastHeartbeatTime"
MAX_BACKOFF = 30.0
WATCH_SECONDS = 300


@dataclass(frozen=True)
class ApiCredentials:
    """Where the API server is and how the pod proves who it is (its projected ServiceAccount token)."""

    server: str
    token_file: Path
    ca_file: Path
    namespace: str

    @classmethod
    def from_dir(cls, api_dir: Path, env: Mapping[str, str] | None = None) -> ApiCredentials:
        """From the projected volume (``token``, ``ca.crt``, ``namespace``) and the pod's environment."""
        env = os.environ if env is None else env
        host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ConfigError(
                "the pod's environment names no API server",
                where="KUBERNETES_SERVICE_HOST",
                fix="run the trading runtime in a pod, or drop --api-dir",
            )
        try:
            namespace = (api_dir / "namespace").read_text().strip()
        except OSError as err:
            raise ConfigError(
                f"cannot read the pod's namespace: {err}", where=str(api_dir), fix="mount it"
            ) from err
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", api_dir / "token", api_dir / "ca.crt", namespace)

    def token(self) -> str:
        """The current token (the kubelet rotates the file)."""
        return self.token_file.read_text().strip()


class KubeApi:
    """The few API calls the trading pod makes about itself."""

    def __init__(self, creds: ApiCredentials) -> None:
        self.creds = creds
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            context = ssl.create_default_context(cafile=str(self.creds.ca_file))
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context), read_bufsize=2**20, raise_for_status=False
            )
        return self._http

    async def close(self) -> None:
        """Close the connections."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    def path(self, plural: str, name: str | None = None, sub: str | None = None) -> str:
        """The URL of a kubequant object (or its list) in the pod's namespace."""
        url = f"{self.creds.server}/apis/{API_GROUP}/{API_VERSION}/namespaces/{self.creds.namespace}/{plural}"
        return url + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.creds.token()}",
            "Accept": "application/json",
            **(extra or {}),
        }

    async def patch_status(self, plural: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the object's status subresource."""
        async with self._session().patch(
            self.path(plural, name, "status"),
            data=json.dumps({"status": status}),
            headers=self._headers({"Content-Type": "application/merge-patch+json"}),
            timeout=aiohttp.ClientTimeout(total=10),
        ) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"status patch answered {resp.status}: {(await resp.text())[:300]}")

    async def watch_one(self, plural: str, name: str) -> AsyncIterator[dict[str, Any]]:
        """The object each time it changes (first as it is), for ever: a list and a watch restricted to
        its name (what a Role with resourceNames allows), resumed from the last resourceVersion, relisted
        when the server has forgotten it, retried with a back-off when the API is unreachable."""
        selector = f"metadata.name={name}"
        version: str | None = None
        backoff = 0.5
        while True:
            try:
                if version is None:
                    async with self._session().get(
                        self.path(plural),
                        params={"fieldSelector": selector},
                        headers=self._headers(),
                        timeout=aiohttp.ClientTimeout(total=15),
                    ) as resp:
                        if resp.status >= 300:
                            raise RuntimeError(f"list answered {resp.status}: {(await resp.text())[:300]}")
                        listed = await resp.json()
                    version = listed["metadata"]["resourceVersion"]
                    for item in listed.get("items") or []:
                        yield item
                params = {
                    "fieldSelector": selector,
                    "watch": "true",
                    "resourceVersion": version,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(WATCH_SECONDS),
                }
                async with self._session().get(
                    self.path(plural),
                    params=params,
                    headers=self._headers(),
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=WATCH_SECONDS + 30),
                ) as resp:
                    if resp.status == 410:
                        version = None
                        continue
                    if resp.status >= 300:
                        raise RuntimeError(f"watch answered {resp.status}: {(await resp.text())[:300]}")
                    backoff = 0.5
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            if obj.get("code") == 410:
                                version = None
                            break
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if kind in ("ADDED", "MODIFIED"):
                            yield obj
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the API server restarts, the network drops: keep following
                log.warning("following %s %s: %s; retrying in %.1f s", plural, name, err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)


def field_manager(meta: Mapping[str, Any], field: str) -> str:
    """Who last wrote ``spec.<field>``: its field manager and when (the API's managedFields)."""
    best: tuple[str, str] | None = None
    for entry in meta.get("managedFields") or []:
        spec = ((entry.get("fieldsV1") or {}).get("f:spec")) or {}
        if f"f:{field}" in spec and (best is None or (entry.get("time") or "") >= best[0]):
            best = (
                entry.get("time") or "",
                f"{entry.get('manager') or '?'} ({entry.get('operation') or '?'})",
            )
    return f"{best[1]} at {best[0]}" if best else ""


class ClusterLink:
    """Follows the session and its RiskPolicy through the API, and reports the runtime's status."""

    def __init__(
        self,
        api: KubeApi,
        oms: OrderManager,
        tracker: PolicyTracker,
        status: Callable[[], Awaitable[dict[str, Any]]],
        session_name: str,
        policy_name: str,
        *,
        on_session: Callable[[int | None], None] | None = None,
        status_seconds: float = 5.0,
        heartbeat_seconds: float = 60.0,
    ) -> None:
        self.api, self.oms, self.tracker, self.status = api, oms, tracker, status
        self.session_name, self.policy_name = session_name, policy_name
        self.on_session = on_session
        self.status_seconds, self.heartbeat_seconds = status_seconds, heartbeat_seconds
        self.writes = 0
        self._policy_changed = asyncio.Event()

    async def run(self, stopping: asyncio.Event) -> None:
        """Follow and report until ``stopping`` is set."""
        tasks = [
            asyncio.create_task(self.follow_session(), name="follow session"),
            asyncio.create_task(self.follow_policies(), name="follow policy"),
            asyncio.create_task(self.report(), name="report status"),
        ]
        try:
            await stopping.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.api.close()

    async def follow_session(self) -> None:
        """``spec.halted`` → the kill switch (journaled with who and why); a new policy reference → follow it."""
        async for obj in self.api.watch_one("livetradingsessions", self.session_name):
            spec, meta = obj.get("spec") or {}, obj.get("metadata") or {}
            try:
                await set_kill_switch(
                    self.oms,
                    bool(spec.get("halted")),
                    source="api",
                    by=field_manager(meta, "halted"),
                    reason=str((meta.get("annotations") or {}).get(HALT_REASON_ANNOTATION) or ""),
                    generation=meta.get("generation"),
                )
            except Exception:
                log.exception("applying the session's kill switch failed")
            if self.on_session is not None:
                self.on_session(meta.get("generation"))
            ref = (spec.get("riskPolicyRef") or {}).get("name")
            if ref and ref != self.policy_name:
                log.info("the session now references RiskPolicy %s", ref)
                self.policy_name = ref
                self._policy_changed.set()

    async def follow_policies(self) -> None:
        """Follow the referenced RiskPolicy; start over on another one when the reference changes."""
        while True:
            self._policy_changed.clear()
            follow = asyncio.create_task(self.follow_policy(self.policy_name))
            changed = asyncio.create_task(self._policy_changed.wait())
            try:
                await asyncio.wait({follow, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                follow.cancel()
                changed.cancel()
                await asyncio.gather(follow, changed, return_exceptions=True)

    async def follow_policy(self, name: str) -> None:
        """Every change of the RiskPolicy reaches the risk engine (journaled with its generation)."""
        async for obj in self.api.watch_one("riskpolicies", name):
            meta = obj.get("metadata") or {}
            try:
                spec = parse_policy(
                    {**obj, "kind": "RiskPolicy", "apiVersion": f"{API_GROUP}/{API_VERSION}"}, name
                )
            except ValidationError as err:
                log.error("keeping the current risk policy: %s", err.one_line())
                continue
            try:
                await self.tracker.apply(spec, source="api", generation=meta.get("generation"), name=name)
            except Exception:
                log.exception("applying RiskPolicy %s failed", name)

    async def report(self, tick: float = 0.25) -> None:
        """Write the runtime's part of the status when it changed (the trading state at once)."""
        last: dict[str, Any] | None = None
        written = 0.0
        while True:
            try:
                current = runtime_status(await self.status())
                now = time.monotonic()
                same = last is not None and _without(current, HEARTBEAT) == _without(last, HEARTBEAT)
                state_changed = last is None or any(current.get(k) != last.get(k) for k in STATE_FIELDS)
                if (
                    state_changed
                    or (not same and now - written >= self.status_seconds)
                    or now - written >= self.heartbeat_seconds
                ):
                    await self.api.patch_status("livetradingsessions", self.session_name, current)
                    self.writes += 1
                    last, written = current, now
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("reporting the session's status failed: %s", err)
                await asyncio.sleep(2.0)
            await asyncio.sleep(tick)


def runtime_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """The runtime's fields of a status (camelCase), a cleared one as null so a merge patch removes it."""
    return {key: status.get(key) for key in RUNTIME_FIELDS}


def _without(status: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k != key}
