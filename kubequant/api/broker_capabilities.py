"""What each broker type can do, in one table: the session's validation, the adapters and the docs read it.

The API cannot import the adapters (``workloads``), so the table lives here, keyed by the
``spec.broker.type`` value; each adapter class declares ``capabilities = capabilities_of(...)``
and a test holds the two together. ``docs/brokers/capabilities.md`` is generated from it
(``render_markdown``) and drift-tested.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class BrokerCapabilities:
    """What a venue supports, as the Broker protocol sees it."""

    market_orders: bool
    limit_orders: bool
    partial_fills: bool
    cancel: bool
    query_by_client_order_id: bool
    short_selling: bool
    fractional_quantities: bool
    lists_instruments: bool
    # The venue itself refuses a second order under a client order id it already holds (Alpaca's
    # 422 "client_order_id must be unique"): a submit its query says it never received may then be
    # sent once more under the same id, since a copy that did arrive can only be refused.
    refuses_duplicate_client_order_id: bool
    notes: str = ""


# Human names of the columns, in the order of the docs' table.
COLUMNS = {
    "market_orders": "Market orders",
    "limit_orders": "Limit orders",
    "partial_fills": "Partial fills",
    "cancel": "Cancel",
    "query_by_client_order_id": "Order query by client order id",
    "short_selling": "Short selling",
    "fractional_quantities": "Fractional quantities",
    "lists_instruments": "Lists tradable instruments",
    "refuses_duplicate_client_order_id": "Refuses a reused client order id",
}

CAPABILITIES: dict[str, BrokerCapabilities] = {
    "paper": BrokerCapabilities(
        market_orders=True,
        limit_orders=True,
        partial_fills=True,
        cancel=True,
        query_by_client_order_id=True,
        short_selling=True,
        fractional_quantities=False,
        lists_instruments=False,
        refuses_duplicate_client_order_id=True,
        notes="Fills against the bundle's bars with the Backtest's deal rules (lots, volume limits); short "
        "selling only with accountType margin outside region cn; its record refuses a reused client order id.",
    ),
    "alpaca": BrokerCapabilities(
        market_orders=True,
        limit_orders=True,
        partial_fills=True,
        cancel=True,
        query_by_client_order_id=True,
        short_selling=True,
        fractional_quantities=True,
        lists_instruments=True,
        refuses_duplicate_client_order_id=True,
        notes="US equities; short selling needs a margin account; fractional quantities only in market day "
        "orders (Alpaca's rule); Alpaca refuses a reused client order id (422 \"client_order_id must be "
        'unique"), so a submit its query says never arrived is sent once more.',
    ),
    "xueqiu": BrokerCapabilities(
        market_orders=True,
        limit_orders=False,
        partial_fills=False,
        cancel=False,
        query_by_client_order_id=True,
        short_selling=False,
        fractional_quantities=True,
        lists_instruments=False,
        refuses_duplicate_client_order_id=False,
        notes="A simulated portfolio (mode paper only) rebalanced by weight at Xueqiu's current price: market "
        "orders only, the weight rounded to 0.01 % towards fewer shares (one fill, the rest canceled); no "
        "cancel (a pending rebalance executes at the next open); no short sales; the client order id is kept "
        "in the rebalance's comment, so an order is found by it (the adapter looks there before posting, but "
        "Xueqiu itself refuses no reused id and a new rebalance may not show yet: a lost submit is never sent "
        "again); quantities are volume x startingCash, fractional.",
    ),
    "gateway": BrokerCapabilities(
        market_orders=True,
        limit_orders=True,
        partial_fills=True,
        cancel=True,
        query_by_client_order_id=True,
        short_selling=False,
        fractional_quantities=False,
        lists_instruments=False,
        refuses_duplicate_client_order_id=False,
        notes="A Windows desktop client (Tonghuashun universal client, miniQMT) through `kubequant gateway`; "
        "A-share cash accounts: no short selling, whole shares; client order ids are kept by the gateway (a "
        "repeated submit gets the first answer), not by the brokerage, so a lost submit is never sent again.",
    ),
}


def capabilities_of(broker_type: str) -> BrokerCapabilities:
    """The row of ``broker_type`` (a ``spec.broker.type`` value)."""
    return CAPABILITIES[str(broker_type)]


def needs_universe() -> list[str]:
    """Real brokers that do not list tradable instruments: their sessions must name them."""
    return [name for name, c in CAPABILITIES.items() if name != "paper" and not c.lists_instruments]


def refusals(spec: Any) -> list[tuple[str, str]]:
    """What a LiveTradingSessionSpec needs that its broker lacks: (field, message with the fix) pairs."""
    broker_type = str(spec.broker.type)
    caps = CAPABILITIES.get(broker_type)
    if caps is None:
        return []
    out: list[tuple[str, str]] = []
    if str(spec.broker.account_type) == "margin" and not caps.short_selling:
        out.append(
            (
                "broker.accountType",
                f"broker type {broker_type} cannot sell short, so a margin account gives nothing; "
                "set broker.accountType cash",
            )
        )
    if spec.strategy.scheduled is not None and not caps.market_orders:
        out.append(
            (
                "strategy.scheduled",
                f"the scheduled strategy sends market orders and broker type {broker_type} takes none; "
                "remove strategy.scheduled and send limit prices through strategy.signalApi",
            )
        )
    if broker_type in needs_universe() and not spec.universe.instruments:
        out.append(
            (
                "universe.instruments",
                f"broker type {broker_type} does not list what the account may trade; list the "
                "instruments in universe.instruments (e.g. [SH600519, SZ000001])",
            )
        )
    if spec.strategy.signal_api is not None and not (caps.market_orders or caps.limit_orders):
        out.append(
            ("strategy.signalApi", f"broker type {broker_type} takes no orders the signal API can send")
        )
    return out


def limit_price_refusal(broker_type: str) -> str | None:
    """Why a limit price cannot go to ``broker_type`` (for the signal API's limitPrices), or None."""
    if capabilities_of(broker_type).limit_orders:
        return None
    return (
        f"limitPrices: broker type {broker_type} takes market orders only; "
        "send the target without a limit price"
    )


def render_markdown() -> str:
    """The capability table of docs/brokers/capabilities.md."""
    header = "| Capability | " + " | ".join(f"`{name}`" for name in CAPABILITIES) + " |"
    rule = "|---|" + "---|" * len(CAPABILITIES)
    lines = [header, rule]
    for attr, title in COLUMNS.items():
        cells = ["yes" if getattr(c, attr) else "no" for c in CAPABILITIES.values()]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    notes = [f"- `{name}`: {c.notes}" for name, c in CAPABILITIES.items() if c.notes]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


if set(COLUMNS) != {f.name for f in fields(BrokerCapabilities)} - {"notes"}:  # pragma: no cover
    raise AssertionError("every capability needs a column title")


BEGIN = "<!-- BEGIN capability table: generated by `python -m kubequant.api.broker_capabilities` -->"
END = "<!-- END capability table -->"


def update_docs(text: str) -> str:
    """``text`` (docs/brokers/capabilities.md) with the table between its markers regenerated."""
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"the page lacks the markers {BEGIN!r} ... {END!r}")
    return f"{head}{BEGIN}\n{render_markdown()}{END}{tail}"


if __name__ == "__main__":  # pragma: no cover - the docs' regeneration command
    from pathlib import Path

    page = Path("docs/brokers/capabilities.md")
    page.write_text(update_docs(page.read_text()))
    print(f"wrote {page}")
