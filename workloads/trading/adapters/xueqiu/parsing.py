"""Xueqiu's portfolio JSON in the Broker protocol's terms: shares from volumes, fills from rebalances.

A Xueqiu portfolio ("cube") holds weights, not shares. Each holding also carries a ``volume``: the
shares held per unit of the portfolio's starting value (net value 1.0), so ``volume × price`` is
the holding's part of the net value. With ``initial_assets`` (the money net value 1.0 stands for,
``spec.startingCash``) a volume becomes shares: ``shares = volume × initial_assets``, exactly, in
Decimal from Xueqiu's printed number. A rebalance's ``rebalancing_histories`` entry has the volume
before (``prev_volume``) and after (``volume``), so each executed entry is a fill of
``(volume − prev_volume) × initial_assets`` shares at the entry's ``price``; the fills of a holding
add up to its position exactly, which is what reconciliation compares.

Xueqiu has no client order ids. The adapter writes a marker into the rebalance's ``comment``
(``kq:<client order id>:<side>:<quantity>:<instrument>``), which the rebalance history returns, so
an order is found again by its client order id after a timeout or a restart.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from kubequant.errors import BrokerError
from kubequant.workloads.trading.adapters.base import BrokerOrder
from kubequant.workloads.trading.model.domain import ZERO, Fill, Side
from kubequant.workloads.trading.model.orders import OrderStatus

MARKER = re.compile(
    r"kq:(?P<cid>[A-Za-z0-9._-]+):(?P<side>buy|sell):(?P<qty>[0-9]+(?:\.[0-9]+)?):(?P<instrument>[A-Za-z0-9.]+)"
)
EXTERNAL = re.compile(r"^xq-(?P<rb>\d+)-(?P<instrument>[A-Za-z0-9.]+)$")
WEIGHT_STEP = Decimal("0.01")  # Xueqiu takes weights in percent with two decimals (easytrader rounds to 2)


@dataclass(frozen=True, slots=True)
class Marker:
    """What the adapter wrote into a rebalance's comment."""

    client_order_id: str
    side: Side
    quantity: Decimal
    instrument: str

    def text(self) -> str:
        """The comment: ``kq:<cid>:<side>:<qty>:<instrument>``."""
        return f"kq:{self.client_order_id}:{self.side.value.lower()}:{self.quantity}:{self.instrument}"


def read_marker(comment: object) -> Marker | None:
    """The adapter's marker in a rebalance comment, or None (a rebalance made on the website)."""
    found = MARKER.search(comment) if isinstance(comment, str) else None
    if found is None:
        return None
    return Marker(found["cid"], Side(found["side"].upper()), Decimal(found["qty"]), found["instrument"])


def dec(value: object) -> Decimal:
    """A number of Xueqiu's JSON as Decimal (via its printed form); None and '' are zero."""
    if value is None or value == "":
        return ZERO
    try:
        out = Decimal(str(value))
    except InvalidOperation:
        raise BrokerError(f"Xueqiu sent {value!r} where a number belongs") from None
    if not out.is_finite():
        raise BrokerError(f"Xueqiu sent {value!r} where a number belongs")
    return out


def ms_time(value: object) -> dt.datetime:
    """Xueqiu's millisecond timestamps as aware UTC datetimes."""
    return dt.datetime.fromtimestamp(int(dec(value)) / 1000, tz=dt.UTC)


def shares(volume: object, multiple: Decimal) -> Decimal:
    """Shares a Xueqiu volume stands for when net value 1.0 is ``multiple`` money."""
    return (dec(volume) * multiple).normalize() + ZERO  # + ZERO turns -0 and 1E+2 into plain numbers


def broker_order_id(rebalancing_id: object, instrument: str) -> str:
    """One instrument's part of one rebalance: the Broker protocol's order."""
    return f"{rebalancing_id}/{instrument}"


def external_id(rebalancing_id: object, instrument: str) -> str:
    """The client order id of a rebalance made outside this session (on the website or by Xueqiu)."""
    return f"xq-{rebalancing_id}-{instrument}"


def read_external_id(client_order_id: str) -> tuple[str, str] | None:
    """(rebalancing id, instrument) of an ``xq-`` id."""
    found = EXTERNAL.match(client_order_id)
    return None if found is None else (found["rb"], found["instrument"])


def entries(rebalancing: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The per-stock entries of a rebalance."""
    rows = rebalancing.get("rebalancing_histories") or []
    return [r for r in rows if isinstance(r, Mapping)]


def executed_delta(entry: Mapping[str, Any], multiple: Decimal) -> Decimal:
    """Signed shares an executed entry moved."""
    return shares(entry.get("volume"), multiple) - shares(entry.get("prev_volume"), multiple)


def entry_for(rebalancing: Mapping[str, Any], instrument: str) -> Mapping[str, Any] | None:
    """The rebalance's entry for ``instrument``."""
    return next((e for e in entries(rebalancing) if str(e.get("stock_symbol")) == instrument), None)


def fills_of(rebalancing: Mapping[str, Any], multiple: Decimal) -> list[Fill]:
    """The fills of an executed (status success) rebalance: one per entry whose volume changed."""
    if rebalancing.get("status") != "success":
        return []
    marker = read_marker(rebalancing.get("comment"))
    rb_id = rebalancing["id"]
    out = []
    for entry in entries(rebalancing):
        delta = executed_delta(entry, multiple)
        if not delta:
            continue
        instrument = str(entry["stock_symbol"])
        ours = marker is not None and marker.instrument == instrument
        side = Side.BUY if delta > 0 else Side.SELL
        out.append(
            Fill(
                fill_id=str(entry["id"]),
                client_order_id=marker.client_order_id if ours and marker else external_id(rb_id, instrument),
                broker_order_id=broker_order_id(rb_id, instrument),
                instrument=instrument,
                side=side,
                quantity=abs(delta),
                price=dec(entry.get("price")),
                fee=ZERO,  # Xueqiu's simulated portfolios report no commission or stamp duty
                ts=ms_time(entry.get("updated_at") or rebalancing.get("updated_at")),
            )
        )
    return out


def report(rebalancing: Mapping[str, Any], instrument: str, multiple: Decimal) -> BrokerOrder | None:
    """One instrument's part of a rebalance as a BrokerOrder; None if the rebalance does not touch it.

    Ours (the comment's marker) asked for a quantity; an executed rebalance that moved fewer shares
    (the weight was rounded to 0.01 %) is reported canceled for the rest. An external one is
    reported as the quantity it moved.
    """
    rb_id, status_text = rebalancing.get("id"), str(rebalancing.get("status", ""))
    marker = read_marker(rebalancing.get("comment"))
    ours = marker is not None and marker.instrument == instrument
    entry = entry_for(rebalancing, instrument)
    if entry is None and not ours:
        return None
    delta = executed_delta(entry, multiple) if entry is not None and status_text == "success" else ZERO
    if ours and marker is not None:
        cid, side, quantity = marker.client_order_id, marker.side, marker.quantity
        moved = delta if side is Side.BUY else -delta
        filled = max(moved, ZERO)
    else:
        if entry is not None and status_text != "success":
            # Not executed yet: the weights say which way it goes.
            weight_delta = dec(entry.get("target_weight")) - dec(entry.get("prev_weight_adjusted"))
            side = Side.BUY if weight_delta > 0 else Side.SELL
        else:
            side = Side.BUY if delta > 0 else Side.SELL
        cid, quantity, filled = external_id(rb_id, instrument), abs(delta), abs(delta)
    reason = ""
    if status_text == "success":
        if filled >= quantity:
            status = OrderStatus.FILLED
        else:
            status = OrderStatus.CANCELED
            reason = (
                f"Xueqiu rebalanced to a weight rounded to {WEIGHT_STEP} %: {filled} of {quantity} shares;"
                " the rest is not traded"
            )
    elif status_text == "pending":
        status = OrderStatus.ACCEPTED
    elif status_text == "failed":
        status = OrderStatus.REJECTED
        reason = (
            f"Xueqiu's rebalance failed: {rebalancing.get('error_message') or rebalancing.get('error_code')}"
        )
    elif status_text == "canceled":
        status = OrderStatus.CANCELED
        reason = "the rebalance was canceled at Xueqiu"
    else:
        status = OrderStatus.ACCEPTED  # an unknown status may still execute
    return BrokerOrder(
        client_order_id=cid,
        broker_order_id=broker_order_id(rb_id, instrument),
        instrument=instrument,
        side=side,
        quantity=quantity,
        filled_quantity=filled,
        status=status,
        reason=reason,
    )


def reports(rebalancing: Mapping[str, Any], multiple: Decimal) -> list[BrokerOrder]:
    """Every instrument's part of a rebalance: ours (the marker's instrument), and any other it moved."""
    marker = read_marker(rebalancing.get("comment"))
    names = [marker.instrument] if marker is not None else []
    for entry in entries(rebalancing):
        name = str(entry.get("stock_symbol"))
        if name in names:
            continue
        if rebalancing.get("status") == "success" and not executed_delta(entry, multiple):
            continue
        if rebalancing.get("status") != "success" and not entry.get("proactive"):
            continue
        names.append(name)
    out = [report(rebalancing, name, multiple) for name in names]
    return [r for r in out if r is not None]


def current_rebalance(portfolio: Mapping[str, Any]) -> Mapping[str, Any]:
    """The portfolio's holdings as executed: ``last_success_rb`` if Xueqiu sends it, else ``last_rb``."""
    for key in ("last_success_rb", "last_rb"):
        rb = portfolio.get(key)
        if isinstance(rb, Mapping):
            return rb
    raise BrokerError("Xueqiu's portfolio answer has no last_rb (the portfolio's holdings)")


def holdings(portfolio: Mapping[str, Any], multiple: Decimal) -> dict[str, Decimal]:
    """Shares held by instrument (non-zero only)."""
    out: dict[str, Decimal] = {}
    for h in current_rebalance(portfolio).get("holdings") or []:
        qty = shares(h.get("volume"), multiple)
        if qty:
            out[str(h["stock_symbol"])] = qty
    return out


def equity(portfolio: Mapping[str, Any], multiple: Decimal) -> Decimal:
    """The portfolio's value in money: net value × initial assets."""
    return dec(portfolio.get("net_value")) * multiple


def cash(portfolio: Mapping[str, Any], multiple: Decimal) -> Decimal:
    """Cash in money: the cash weight of the executed holdings times the equity."""
    return equity(portfolio, multiple) * dec(current_rebalance(portfolio).get("cash")) / 100
