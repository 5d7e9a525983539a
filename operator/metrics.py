"""The operator's Prometheus metrics: reconciles by kind and outcome, their duration, objects by phase."""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILES = Counter(
    "kubequant_reconciles",
    "Reconciles by kind and outcome (success, permanent_error, temporary_error, error).",
    ["kind", "outcome"],
)
RECONCILE_SECONDS = Histogram(
    "kubequant_reconcile_duration_seconds",
    "Time spent in one reconcile, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class PhaseTracker(Collector):
    """Last seen phase of every object, exported as kubequant_objects{kind, phase}."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}

    def set(self, kind: str, key: str, phase: str) -> None:
        """Record an object's phase."""
        with self._lock:
            self._phases[(kind, key)] = phase

    def forget(self, kind: str, key: str) -> None:
        """Drop a deleted object."""
        with self._lock:
            self._phases.pop((kind, key), None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            counts = Tally((kind, phase) for (kind, _), phase in self._phases.items())
        family = GaugeMetricFamily(
            "kubequant_objects", "Custom resources by kind and phase.", labels=["kind", "phase"]
        )
        for (kind, phase), count in sorted(counts.items()):
            family.add_metric([kind, phase], count)
        yield family


PHASES = PhaseTracker()
REGISTRY.register(PHASES)


@contextmanager
def observe_reconcile(kind: str) -> Iterator[None]:
    """Time a reconcile and count its outcome from the exception it ends with (if any)."""
    import kopf

    start = time.perf_counter()
    outcome = "success"
    try:
        yield
    except kopf.PermanentError:
        outcome = "permanent_error"
        raise
    except kopf.TemporaryError:
        outcome = "temporary_error"
        raise
    except Exception:
        outcome = "error"
        raise
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - start)
        RECONCILES.labels(kind, outcome).inc()


def serve(port: int, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve /metrics on ``port`` in a background thread."""
    start_http_server(port, registry=registry)
