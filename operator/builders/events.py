"""core/v1 Events about kubequant's objects, named after what they announce (pure).

kopf.event posts under a generated name, so an announcement repeated by a retried reconcile is a
second Event: the handler posts it, then kopf's status patch is lost (an API server restarted between
the two), and the retry sees the old status and announces the same transition again. An Event built
here is named after the object's uid, its reason and a key the caller derives from the transition (the
status it leaves): the retry's create is refused with 409 AlreadyExists and the transition stays
announced once, while a later transition of the same kind (another status left) gets a name of its own.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

REPORTING_COMPONENT = "kubequant-operator"
MAX_MESSAGE = 1024  # as kopf cuts them: the API server refuses longer Event messages in places
_CUT = "..."
# An Event's name is a DNS subdomain (253 characters); the object's name (itself one) leads it so that
# `kubectl get events` sorts an object's Events together.
_MAX_LEAD = 180
_NOT_NAME = re.compile(r"[^a-z0-9-]+")


def status_digest(status: Mapping[str, Any] | None) -> str:
    """A short, stable digest of a status: the key of a transition away from it."""
    text = json.dumps(status or {}, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def event_name(involved: Mapping[str, Any], reason: str, key: str) -> str:
    """``<object>.<reason>.<digest>``: the same for the same object, reason and key, whoever asks."""
    meta = involved.get("metadata") or {}
    name = str(meta.get("name") or "object")
    identity = str(meta.get("uid") or f"{meta.get('namespace')}/{name}")
    digest = hashlib.sha256(f"{identity}\n{reason}\n{key}".encode()).hexdigest()[:16]
    slug = _NOT_NAME.sub("-", reason.lower()).strip("-")[:40] or "event"
    return f"{name[:_MAX_LEAD].rstrip('.-')}.{slug}.{digest}"


def cut_message(message: str) -> str:
    """``message`` within MAX_MESSAGE characters, keeping its start and its end."""
    if len(message) <= MAX_MESSAGE:
        return message
    half = (MAX_MESSAGE - len(_CUT)) // 2
    return f"{message[:half]}{_CUT}{message[-(MAX_MESSAGE - len(_CUT) - half) :]}"


def build_event(
    involved: Mapping[str, Any],
    *,
    type: str,
    reason: str,
    message: str,
    key: str,
    now: dt.datetime,
    instance: str,
) -> dict[str, Any]:
    """The Event announcing ``reason`` about ``involved`` (the object's body), named by ``key``."""
    meta = involved.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    ref = {
        "apiVersion": involved.get("apiVersion"),
        "kind": involved.get("kind"),
        "name": meta.get("name"),
        "namespace": namespace,
    }
    if meta.get("uid"):
        ref["uid"] = meta["uid"]
    stamp = now.astimezone(dt.UTC)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(involved, reason, key), "namespace": namespace},
        "involvedObject": {k: v for k, v in ref.items() if v is not None},
        "type": type,
        "reason": reason,
        "message": cut_message(message),
        "action": "Reconcile",
        "count": 1,
        "source": {"component": REPORTING_COMPONENT},  # the "From" column of kubectl describe
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventTime": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
