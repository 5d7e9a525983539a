"""Prometheus metrics of the trading runtime (``kubequant_`` prefix, base units, no per-order labels)."""

from __future__ import annotations

from functools import cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

ORDER_TRANSITIONS = Counter("kubequant_order_transitions_total", "Orders entering each state.", ["status"])
RISK_REJECTIONS = Counter(
    "kubequant_risk_rejections_total", "Orders rejected by the risk engine, by reason code.", ["reason"]
)
SIGNAL_TO_SUBMIT_SECONDS = Histogram(
    "kubequant_signal_to_submit_seconds",
    "Time from receiving a signal to handing its order to the broker (risk check and journal included).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
TRADING_STATE = Gauge("kubequant_trading_state", "1 for the session's trading state.", ["state"])
BROKER_CONNECTED = Gauge("kubequant_broker_connected", "1 while the broker connection is up.")
EQUITY = Gauge("kubequant_equity", "Account equity reported by the broker.")
RECONCILIATION_ANOMALIES = Counter(
    "kubequant_reconciliation_anomalies_total", "Broker facts the OMS could not explain."
)


@cache
def order_transitions(status: str) -> Any:
    """The transitions counter of one status (``labels`` takes a lock and builds a key per call: once per status)."""
    return ORDER_TRANSITIONS.labels(status)
