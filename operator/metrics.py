"""The operator's Prometheus metrics: reconciles by kind and outcome, their duration, objects by phase,
and the results of finished Backtests and TrainingJobs served from their ``.status`` (their Job pods
live minutes and are never scraped; there is no Pushgateway).

Per-object series carry ``namespace``/``name`` and disappear when the object is deleted, so their
number is bounded by the objects in the cluster.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeGuard

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
    """Last seen phase of every object: kubequant_objects{kind, phase} (counts) and
    kubequant_object_phase{kind, namespace, name, phase} (1 per object, its current phase)."""

    families = (
        ("kubequant_objects", "Custom resources by kind and phase.", ("kind", "phase")),
        (
            "kubequant_object_phase",
            "1 for each custom resource, labelled with its current phase.",
            ("kind", "namespace", "name", "phase"),
        ),
    )

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

    def describe(self) -> Iterator[GaugeMetricFamily]:
        for name, help_, labels in self.families:
            yield GaugeMetricFamily(name, help_, labels=list(labels))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            phases = sorted(self._phases.items())
        counts = Tally((kind, phase) for (kind, _), phase in phases)
        (n1, h1, l1), (n2, h2, l2) = self.families
        family = GaugeMetricFamily(n1, h1, labels=list(l1))
        for (kind, phase), count in sorted(counts.items()):
            family.add_metric([kind, phase], count)
        yield family
        each = GaugeMetricFamily(n2, h2, labels=list(l2))
        for (kind, key), phase in phases:
            namespace, _, name = key.partition("/")
            each.add_metric([kind, namespace, name, phase], 1)
        yield each


# (metric name, help, kind it applies to, path in .status). Results are ratios/dimensionless.
RESULT_GAUGES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    (
        "kubequant_backtest_ic",
        "Mean daily Pearson IC of a Backtest's signal (.status.results.ic).",
        "Backtest",
        ("results", "ic"),
    ),
    (
        "kubequant_backtest_rank_ic",
        "Mean daily Spearman IC of a Backtest's signal (.status.results.rankIc).",
        "Backtest",
        ("results", "rankIc"),
    ),
    (
        "kubequant_backtest_icir",
        "IC mean over IC standard deviation of a Backtest (.status.results.icir).",
        "Backtest",
        ("results", "icir"),
    ),
    (
        "kubequant_backtest_sharpe",
        "Sharpe ratio of a Backtest, risk-free 0 (.status.results.sharpe).",
        "Backtest",
        ("results", "sharpe"),
    ),
    (
        "kubequant_backtest_annualized_return_ratio",
        "Annualised net return of a Backtest, as a fraction (.status.results.annualizedReturn).",
        "Backtest",
        ("results", "annualizedReturn"),
    ),
    (
        "kubequant_backtest_max_drawdown_ratio",
        "Largest peak-to-trough loss of a Backtest, a negative fraction (.status.results.maxDrawdown).",
        "Backtest",
        ("results", "maxDrawdown"),
    ),
    (
        "kubequant_trainingjob_ic",
        "Mean daily Pearson IC of a TrainingJob's model on the test segment (.status.metrics.ic).",
        "TrainingJob",
        ("metrics", "ic"),
    ),
    (
        "kubequant_trainingjob_rank_ic",
        "Mean daily Spearman IC on the test segment (.status.metrics.rankIc).",
        "TrainingJob",
        ("metrics", "rankIc"),
    ),
    (
        "kubequant_trainingjob_icir",
        "IC mean over its standard deviation on the test segment (.status.metrics.icir).",
        "TrainingJob",
        ("metrics", "icir"),
    ),
    (
        "kubequant_trainingjob_valid_ic",
        "Mean daily IC on the valid segment (.status.metrics.validIc).",
        "TrainingJob",
        ("metrics", "validIc"),
    ),
)


class StatusFigures(Collector):
    """Figures of each finished object taken from its status, by (kind, namespace, name); a deleted
    object's series go with it. Subclasses say which families they serve and how to read a status."""

    families: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str, str], Any] = {}

    def _put(self, key: tuple[str, str, str], figures: Any) -> None:
        """Keep ``figures`` for ``key``; None (nothing to serve) drops its series."""
        with self._lock:
            if figures is None:
                self._values.pop(key, None)
            else:
                self._values[key] = figures

    def _items(self) -> list[tuple[tuple[str, str, str], Any]]:
        with self._lock:
            return sorted(self._values.items())

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """Drop a deleted object's series."""
        self._put((kind, namespace, name), None)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        for name, help_, labels in self.families:
            yield GaugeMetricFamily(name, help_, labels=list(labels))


class ResultsTracker(StatusFigures):
    """The headline results of each finished Backtest/TrainingJob, from the status the operator wrote."""

    families = tuple((name, help_, ("namespace", "name")) for name, help_, _, _ in RESULT_GAUGES)

    def observe(self, kind: str, namespace: str, name: str, status: Mapping[str, Any] | None) -> None:
        """Take the figures of ``kind`` ``namespace``/``name`` from its ``status`` (absent ones are dropped)."""
        values: dict[str, float] = {}
        for metric, _, of_kind, path in RESULT_GAUGES:
            if of_kind != kind:
                continue
            value: Any = status or {}
            for part in path:
                value = value.get(part) if isinstance(value, Mapping) else None
            if _finite(value):
                values[metric] = float(value)
        self._put((kind, namespace, name), values or None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        items = self._items()
        for metric, help_, _, _ in RESULT_GAUGES:
            family = GaugeMetricFamily(metric, help_, labels=["namespace", "name"])
            for (_, namespace, name), values in items:
                if metric in values:
                    family.add_metric([namespace, name], values[metric])
            yield family


class DataQualityTracker(StatusFigures):
    """The data quality of each finished run, from a Backtest's ``.status.results.dataQuality`` or a
    TrainingJob's ``.status.dataQuality``: the missing-value ratio by field read, and the universe
    members with no data in the period."""

    families = (
        (
            "kubequant_run_data_missing_ratio",
            "Fraction of the cells a finished run read that are missing, by field (its status' dataQuality).",
            ("kind", "namespace", "name", "field"),
        ),
        (
            "kubequant_run_instruments_missing",
            "Universe members with no data in a finished run's period (its status' dataQuality).",
            ("kind", "namespace", "name"),
        ),
    )

    def observe(self, kind: str, namespace: str, name: str, status: Mapping[str, Any] | None) -> None:
        """Take ``kind`` ``namespace``/``name``'s data quality from its ``status`` (none: its series go)."""
        results = (status or {}).get("results")
        quality = (
            results.get("dataQuality") if isinstance(results, Mapping) else (status or {}).get("dataQuality")
        )
        ratios: dict[str, float] = {}
        missing: float | None = None
        if isinstance(quality, Mapping):
            by_field = quality.get("missingRatio")
            if isinstance(by_field, Mapping):
                ratios = {str(f): float(v) for f, v in by_field.items() if _finite(v)}
            count = quality.get("instrumentsMissing")
            missing = float(count) if _finite(count) else None
        self._put((kind, namespace, name), (ratios, missing) if ratios or missing is not None else None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        items = self._items()
        (n1, h1, l1), (n2, h2, l2) = self.families
        ratio = GaugeMetricFamily(n1, h1, labels=list(l1))
        absent = GaugeMetricFamily(n2, h2, labels=list(l2))
        for (kind, namespace, name), (ratios, missing) in items:
            for field_name, value in sorted(ratios.items()):
                ratio.add_metric([kind, namespace, name, field_name], value)
            if missing is not None:
                absent.add_metric([kind, namespace, name], missing)
        yield ratio
        yield absent


def _finite(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


PHASES = PhaseTracker()
REGISTRY.register(PHASES)
RESULTS = ResultsTracker()
REGISTRY.register(RESULTS)
DATA_QUALITY = DataQualityTracker()
REGISTRY.register(DATA_QUALITY)


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
