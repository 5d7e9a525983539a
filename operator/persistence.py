"""Where kopf keeps its bookkeeping of each object: in ``status.kopf``, written with the status.

kopf records, per object, the configuration it last handled (to tell a change from a creation and
to give field handlers their diff) and the progress of handlers being retried. Kept in annotations
(as this operator did before), every reconcile cost two writes: a PATCH of the object for the
annotations and a PATCH of the status subresource for the status. In ``status.kopf`` both travel in
the one status PATCH (kopf sends status changes to the subresource and everything else to the
object, and with nothing else there is no second request): a 200-Backtest burst made 200 fewer
writes (benchmarks/operator_latency.py, the API server's request counters).

The CRDs declare ``status.kopf`` as an object with unknown fields preserved (``StatusBase.kopf``):
without that the API server prunes it and kopf would take every event for a new object.

Objects handled by an operator that kept annotations are read from those: the annotation is a
fallback for reading only, never written again, so an upgrade does not handle them as new.
"""

from __future__ import annotations

from typing import Any

import kopf

from kubequant.version import API_GROUP

STATUS_STANZA = "kopf"  # status.kopf: also the name of the field in the status models
LEGACY_DIFFBASE_KEY = "last-handled-configuration"


class _ReadOnlyAnnotationsProgress(kopf.AnnotationsProgressStorage):
    """Handler progress an older operator left in annotations: read, and purged when done, never written."""

    def store(self, **_: Any) -> None:
        return None

    def touch(self, **_: Any) -> None:
        return None


class _ReadOnlyAnnotationsDiffBase(kopf.AnnotationsDiffBaseStorage):
    """The last handled configuration an older operator left in an annotation: read, never written."""

    def store(self, **_: Any) -> None:
        return None


def progress_storage() -> kopf.ProgressStorage:
    """Handler progress in status.kopf.progress (read from the older annotations too)."""
    return kopf.MultiProgressStorage(
        [
            kopf.StatusProgressStorage(name=STATUS_STANZA),
            _ReadOnlyAnnotationsProgress(prefix=API_GROUP),
        ]
    )


def diffbase_storage() -> kopf.DiffBaseStorage:
    """The last handled configuration in status.kopf (read from the older annotation too)."""
    return kopf.MultiDiffBaseStorage(
        [
            kopf.StatusDiffBaseStorage(name=STATUS_STANZA),
            _ReadOnlyAnnotationsDiffBase(prefix=API_GROUP, key=LEGACY_DIFFBASE_KEY),
        ]
    )
