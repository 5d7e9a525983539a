"""Prometheus metrics of the trading runtime (``kubequant_`` prefix, base units, no per-order labels)."""

from __future__ import annotations

from collections.abc import Mapping
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

SIGNAL_API_ANSWERS = Counter(
    "kubequant_signal_api_answers_total",
    "Answers of the signal API's operations (/v1/), by route and HTTP status (401 and 429 included).",
    ["route", "code"],
)


@cache
def signal_api_answers(route: str, code: int) -> Any:
    """The answers counter of one route and status (a handful of pairs: built once each)."""
    return SIGNAL_API_ANSWERS.labels(route=route, code=str(code))


@cache
def order_transitions(status: str) -> Any:
    """The transitions counter of one status (``labels`` takes a lock and builds a key per call: once per status)."""
    return ORDER_TRANSITIONS.labels(status)


# --- execution quality (observed as the OMS applies broker facts) -------------------------------
FILLS_PER_ORDER = Histogram(
    "kubequant_fills_per_order",
    "Fills an order took, observed when it closes having filled something (how fragmented execution is).",
    buckets=(1, 2, 3, 5, 10, 20, 50, 100),
)
FILL_SHORTFALL_BPS = Histogram(
    "kubequant_fill_shortfall_bps",
    "Implementation shortfall of each fill against its order's reference (arrival) price, in basis "
    "points; positive is a cost (bought above or sold below the reference).",
    buckets=(-100, -50, -20, -10, -5, -2, 0, 2, 5, 10, 20, 50, 100, 200),
)
# --- the book (set by record_book each account refresh) ----------------------------------------
GROSS_EXPOSURE = Gauge(
    "kubequant_gross_exposure_ratio",
    "Sum of |filled position| × last price over the account's equity (no price: valued at 0 and counted "
    "in kubequant_book_unpriced_positions).",
)
LARGEST_CONCENTRATION = Gauge(
    "kubequant_largest_concentration_ratio",
    "The largest single position's |value| over the account's equity.",
)
BOOK_UNPRICED = Gauge(
    "kubequant_book_unpriced_positions", "Held instruments with no last price to value them."
)


def record_fill(side_sign: int, price: Any, reference: Any) -> None:
    """Observe one fill's shortfall against the order's reference price (no reference: nothing to observe)."""
    if reference is None or reference <= 0:
        return
    FILL_SHORTFALL_BPS.observe(float(side_sign * (price - reference) / reference) * 10_000)


def record_book(positions: Any, last_price: Any, equity: Any) -> None:
    """Set gross exposure and the largest concentration from filled positions (instrument -> quantity)."""
    gross, largest, unpriced = 0.0, 0.0, 0
    for inst, qty in positions.items():
        price = last_price(inst)
        if price is None:
            unpriced += 1
            continue
        value = abs(float(qty * price))
        gross += value
        largest = max(largest, value)
    BOOK_UNPRICED.set(unpriced)
    if equity is not None and equity > 0:
        GROSS_EXPOSURE.set(gross / float(equity))
        LARGEST_CONCENTRATION.set(largest / float(equity))


# --- risk (set by record_risk from the risk engine's own figures; see docs/metrics.md) ---------
DRAWDOWN = Gauge(
    "kubequant_drawdown_ratio", "Loss from the equity peak, as a fraction of the peak (0 at a new high)."
)
DAILY_PNL = Gauge(
    "kubequant_daily_pnl", "Equity change since the start of the exchange's trading day, in account currency."
)
DAILY_LOSS = Gauge(
    "kubequant_daily_loss_ratio",
    "Loss since the start of the trading day, as a fraction of the day's opening equity.",
)
BREAKER_LIMIT = Gauge(
    "kubequant_breaker_limit_ratio",
    "The risk policy's breaker threshold (fraction), by breaker (max_drawdown, max_daily_loss).",
    ["breaker"],
)
RISK_CONDITION = Gauge(
    "kubequant_risk_condition",
    "1 while a risk condition holds the session out of ACTIVE (kill_switch, max_drawdown, max_daily_loss, "
    "broker_disconnect, ...).",
    ["condition"],
)
BREAKER_TRIPS = Counter(
    "kubequant_breaker_trips_total", "Risk conditions that started holding, by condition.", ["condition"]
)
KILL_SWITCH = Gauge("kubequant_kill_switch_engaged", "1 while the session's kill switch is on.")
BROKER_RECONNECTS = Counter("kubequant_broker_reconnects_total", "Broker connections regained after a loss.")

BREAKERS = ("max_drawdown", "max_daily_loss")
_held: set[str] = set()
_connected: list[bool] = []


def record_risk(risk: Any, equity: Any) -> None:
    """Set the risk gauges from a RiskEngine after it observed ``equity`` (a Decimal); count trips.

    Conditions are a small fixed set of names (never instruments or orders): bounded labels.
    """
    peak, start = risk.peak_equity, risk.day_start_equity
    if peak is not None and peak > 0:
        DRAWDOWN.set(max(0.0, float((peak - equity) / peak)))
    if start is not None:
        DAILY_PNL.set(float(equity - start))
        if start > 0:
            DAILY_LOSS.set(max(0.0, float((start - equity) / start)))
    breakers = risk.policy.breakers
    for name in BREAKERS:
        limit = getattr(breakers, name, None)
        if limit is not None:
            BREAKER_LIMIT.labels(name).set(float(limit))
    record_conditions(set(risk.conditions))


def record_conditions(held: set[str]) -> None:
    """Set kubequant_risk_condition and the kill switch from the names of the conditions that hold."""
    for name in held - _held:
        BREAKER_TRIPS.labels(name).inc()
    for name in held | _held:
        RISK_CONDITION.labels(name).set(1 if name in held else 0)
    KILL_SWITCH.set(1 if "kill_switch" in held else 0)
    _held.clear()
    _held.update(held)


# The condition a failed journal write holds: not the risk engine's, so record_risk never clears it
# (the housekeeping that calls record_risk stops with the OMS; only a restart clears the condition).
JOURNAL_WRITE_FAILED = "journal_write_failed"


def record_journal_failed(states: tuple[str, ...]) -> None:
    """The journal refused a write: the session trades nothing until a restart. Shown as HALTED (so
    KubequantSessionHalted fires) with the condition ``journal_write_failed``; ``states``: every
    trading state's name, HALTED among them."""
    for state in states:
        TRADING_STATE.labels(state).set(1 if state == "HALTED" else 0)
    record_conditions(_held | {JOURNAL_WRITE_FAILED})


def record_connectivity(connected: bool) -> None:
    """Set kubequant_broker_connected; count a reconnect when a lost connection comes back."""
    if connected and _connected and not _connected[-1]:
        BROKER_RECONNECTS.inc()
    BROKER_CONNECTED.set(1 if connected else 0)
    _connected[:] = [connected]


# --- data quality and live model performance ---------------------------------------------------
LAST_BAR_TIMESTAMP = Gauge(
    "kubequant_last_bar_timestamp_seconds", "Unix time of the newest market-data bar the session has seen."
)
TRADING_WINDOW_OPEN = Gauge(
    "kubequant_trading_window_open",
    "1 while the risk policy's trading window is open (staleness alerts only then).",
)
DATA_MISSING_RATIO = Gauge(
    "kubequant_data_missing_ratio",
    "Missing values among the latest bars, by field the session reads.",
    ["field"],
)
DATA_INSTRUMENTS_MISSING = Gauge(
    "kubequant_data_instruments_missing", "Instruments of the universe with no bar in the latest period."
)
LIVE_RANK_IC = Gauge(
    "kubequant_live_rolling_rank_ic", "Rolling rank IC of the session's scores against realised returns."
)


def record_bar(timestamp: float, *, in_window: bool) -> None:
    """The newest bar's time (Unix seconds) and whether the trading window is open."""
    LAST_BAR_TIMESTAMP.set(timestamp)
    TRADING_WINDOW_OPEN.set(1 if in_window else 0)


def record_data_quality(missing_ratio: Mapping[str, float], instruments_missing: int) -> None:
    """The latest bar's missing-value ratio by field, and the universe's instruments with no value."""
    for field, ratio in missing_ratio.items():
        DATA_MISSING_RATIO.labels(field).set(ratio)
    DATA_INSTRUMENTS_MISSING.set(instruments_missing)
