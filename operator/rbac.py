"""The Kubernetes API access the operator needs, declared next to the code that needs it.

Every handler module (``kubequant.operator.handlers.HANDLER_MODULES``) has a module-level ``RBAC``
tuple of :class:`Access`; kopf's own needs are :data:`KOPF`. :func:`required_grants` unions them for
one install mode, and ``tests/unit/test_rbac.py`` fails when the chart's Roles and ClusterRoles grant
anything else — or less — as ``kubequant crds generate --check`` does for the CRDs. The same tests
check each declaration against what the code really calls (the Kubernetes client's requests,
recorded) and what kopf's registry implies (a watched kind is listed and watched, a changed kind is
patched), so a declaration cannot go stale in either direction.

No Secret is ever read: the operator puts Secrets into pod specs by reference only.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Grant = tuple[str, str, str]
"""(apiGroup, resource, verb), the unit of an RBAC rule."""

Source = Literal["code", "kopf", "admission"]
Serving = Literal["any", "all-namespaces", "named-namespaces"]
RbacScope = Literal["cluster", "namespace"]


@dataclass(frozen=True)
class Access:
    """API access one component needs, and why."""

    group: str
    resource: str
    verbs: tuple[str, ...]
    why: str
    # Who makes the call: the handler's own code (kubequant.operator.kube), kopf on the handler's
    # behalf (watching, progress annotations, status), or nobody — an admission plugin demands it.
    source: Source = "code"
    # A cluster-scoped resource: only a ClusterRole can grant it, whatever rbac.scope says.
    cluster_scoped: bool = False
    # Whether the need depends on the operator serving all namespaces or named ones.
    serving: Serving = "any"

    def grants(self) -> set[Grant]:
        """The (group, resource, verb) triples this access needs."""
        return {(self.group, self.resource, verb) for verb in self.verbs}


# kopf's own needs, whatever the handlers are (kopf 1.45: _core/engines/peering.py,
# _core/reactor/observation.py, _cogs/clients/events.py). Resource discovery itself reads /apis,
# which every authenticated account may; with named namespaces kopf would also list and watch
# Namespaces to notice them coming and going, and without that grant it serves the named ones as
# given (a warning at start), so no install grants it.
KOPF: tuple[Access, ...] = (
    Access(
        "kopf.dev",
        "clusterkopfpeerings",
        ("list", "watch", "patch"),
        "peering of an operator serving all namespaces: watch the peers, touch its own entry",
        source="kopf",
        cluster_scoped=True,
        serving="all-namespaces",
    ),
    Access(
        "kopf.dev",
        "kopfpeerings",
        ("list", "watch", "patch"),
        "peering of an operator serving named namespaces: one KopfPeering in each",
        source="kopf",
        serving="named-namespaces",
    ),
    Access(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        ("list", "watch"),
        "kopf follows the served CRDs being added, upgraded or removed",
        source="kopf",
        cluster_scoped=True,
    ),
    Access(
        "",
        "events",
        ("create",),
        "kopf's handler log lines, posted as core/v1 Events (POST only)",
        source="kopf",
    ),
)


# The handlers' own Events (reconciler.post_event): each named after the transition it announces, so a
# repeat is refused (409) rather than posted twice; create is all it takes.
EVENTS = Access(
    "", "events", ("create",), "announce phases and condition transitions, once each (named Events)"
)


def owner_kind(group: str, plural: str, watched: str) -> tuple[Access, ...]:
    """What every kind the operator reconciles into children needs: kopf watching it (``watched``
    says what for), kopf's object patches and status writes, and the admission
    rule for children that block their owner's deletion, and the Events announcing its transitions."""
    return (
        Access(group, plural, ("list", "watch"), f"kopf watches {watched}", source="kopf"),
        Access(
            group,
            plural,
            ("patch",),
            "kopf's finalizers, and clearing the progress annotations an older operator kept",
            source="kopf",
        ),
        Access(group, f"{plural}/status", ("patch",), "kopf writes the status a handler sets", source="kopf"),
        EVENTS,
        Access(
            group,
            f"{plural}/finalizers",
            ("update",),
            "children set blockOwnerDeletion, which OwnerReferencesPermissionEnforcement allows only "
            "with update on the owner's finalizers",
            source="admission",
        ),
    )


def handler_modules() -> list[object]:
    """The handler modules, imported (which registers their handlers with kopf)."""
    from kubequant.operator.handlers import HANDLER_MODULES

    return [importlib.import_module(name) for name in HANDLER_MODULES]


def declared() -> tuple[Access, ...]:
    """kopf's needs and every handler module's ``RBAC``."""
    out = list(KOPF)
    for module in handler_modules():
        out.extend(module.RBAC)  # type: ignore[attr-defined]
    return tuple(out)


@dataclass(frozen=True)
class Grants:
    """What an install mode must grant: cluster-wide, and in each served namespace."""

    cluster: frozenset[Grant]
    per_namespace: frozenset[Grant]


def required_grants(
    scope: RbacScope, all_namespaces: bool, accesses: Iterable[Access] | None = None
) -> Grants:
    """The grants of one install mode (the chart's ``rbac.scope`` and whether it serves every namespace).

    ``cluster``: one ClusterRole grants everything. ``namespace``: a Role in each served namespace
    grants the namespaced resources, and a ClusterRole only the cluster-scoped ones.
    """
    if scope == "namespace" and all_namespaces:
        raise ValueError("rbac.scope=namespace always serves named namespaces")
    serving: Serving = "all-namespaces" if all_namespaces else "named-namespaces"
    cluster: set[Grant] = set()
    per_namespace: set[Grant] = set()
    for access in declared() if accesses is None else accesses:
        if access.serving not in ("any", serving):
            continue
        if scope == "cluster" or access.cluster_scoped:
            cluster |= access.grants()
        else:
            per_namespace |= access.grants()
    return Grants(frozenset(cluster), frozenset(per_namespace))


def as_rules(grants: Iterable[Grant]) -> list[dict[str, list[str]]]:
    """Grants as RBAC rules, one per (group, resource), sorted: what a Role's ``rules`` would say."""
    by_resource: dict[tuple[str, str], set[str]] = {}
    for group, resource, verb in grants:
        by_resource.setdefault((group, resource), set()).add(verb)
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": sorted(verbs)}
        for (group, resource), verbs in sorted(by_resource.items())
    ]
