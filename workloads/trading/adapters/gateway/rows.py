"""Reading easytrader's rows: the universal client's grids (Chinese column names) and miniQMT's dicts.

easytrader hands back what the desktop client shows. The universal (Tonghuashun) client's grids
name their columns in Chinese, and brokerages' builds differ in a few names (``股票余额`` or
``当前持仓``, ``备注`` or ``委托状态``), so each field is looked up under the names seen in
easytrader's documentation and issues, in order. miniQMT's rows are xtquant's objects as dicts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from kubequant.workloads.trading.adapters.gateway.protocol import to_instrument

CHINA = ZoneInfo("Asia/Shanghai")

# Field name alternatives, most common first.
CODE = ("证券代码", "股票代码", "security", "stock_code")
ENTRUST_NO = ("合同编号", "委托编号", "entrust_no", "order_id")
TRADE_ID = ("成交编号", "traded_id")
SIDE = ("操作", "买卖标志", "买卖方向", "委托类别")
STATUS = ("备注", "委托状态", "状态说明", "order_status")
ORDER_QTY = ("委托数量", "order_volume")
FILLED_QTY = ("成交数量", "traded_volume")
ORDER_PRICE = ("委托价格", "price")
TRADE_QTY = ("成交数量", "traded_volume")
TRADE_PRICE = ("成交均价", "成交价格", "traded_price")
TRADE_TIME = ("成交时间", "traded_time")
HELD = ("股票余额", "当前持仓", "实际数量", "证券数量", "volume")
SELLABLE = ("可用余额", "可卖数量", "股份可用", "can_use_volume")
MARKET_PRICE = ("市价", "参考市价", "当前价", "最新价")
CASH = ("资金余额", "cash")
AVAILABLE = ("可用金额",)
EQUITY = ("总资产", "total_asset")

# miniQMT (xtconstant): order types and order statuses.
XT_BUY, XT_SELL = 23, 24
XT_STATUS = {
    48: "accepted",  # 未报
    49: "accepted",  # 待报
    50: "accepted",  # 已报
    51: "pending_cancel",  # 已报待撤
    52: "pending_cancel",  # 部成待撤
    53: "canceled",  # 部撤
    54: "canceled",  # 已撤
    55: "partially_filled",  # 部成
    56: "filled",  # 已成
    57: "rejected",  # 废单
}


def field(row: Mapping[str, Any], names: Sequence[str], default: Any = None) -> Any:
    """The first of ``names`` present in ``row``."""
    for name in names:
        if name in row and row[name] not in (None, ""):
            return row[name]
    return default


def number(value: Any) -> Decimal | None:
    """A Decimal from a grid cell (a number or a string, possibly with thousands separators)."""
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value).replace(",", "").strip())
    except InvalidOperation:
        return None


def side_of(row: Mapping[str, Any]) -> str | None:
    """BUY or SELL from a row's direction (``买入``/``证券买入``/``卖出``, or miniQMT's order type)."""
    if "order_type" in row and isinstance(row["order_type"], int):
        return {XT_BUY: "BUY", XT_SELL: "SELL"}.get(row["order_type"])
    text = str(field(row, SIDE, ""))
    if "买" in text:
        return "BUY"
    if "卖" in text:
        return "SELL"
    return None


def status_of(row: Mapping[str, Any], quantity: Decimal, filled: Decimal) -> str:
    """The wire status of an entrust row (see protocol.WIRE_STATUSES)."""
    raw = field(row, STATUS, "")
    if isinstance(raw, int):
        status = XT_STATUS.get(raw, "accepted")
    else:
        text = str(raw)
        if "废" in text or "失败" in text or "拒" in text:
            status = "rejected"
        elif "撤" in text and "待" in text:
            status = "pending_cancel"
        elif "撤" in text:
            status = "canceled"  # 已撤, 部撤 (the filled part stays filled)
        elif "已成" in text or "全部成交" in text:
            status = "filled"
        elif "部成" in text or "部分成交" in text:
            status = "partially_filled"
        else:
            status = "accepted"  # 未报, 已报, 正报, 未成交...
    if status in ("accepted", "partially_filled") and quantity > 0 and filled >= quantity:
        return "filled"
    if status == "accepted" and filled > 0:
        return "partially_filled"
    return status


@dataclass(frozen=True)
class Entrust:
    """One row of the day's entrusts."""

    entrust_no: str
    instrument: str
    side: str | None
    quantity: Decimal
    filled: Decimal
    price: Decimal | None
    status: str
    raw_status: str


def entrust(row: Mapping[str, Any]) -> Entrust | None:
    """An entrust row, or None if it lacks an entrust number or a code."""
    no, code = field(row, ENTRUST_NO), field(row, CODE)
    if no is None or code is None:
        return None
    quantity = number(field(row, ORDER_QTY)) or Decimal(0)
    filled = number(field(row, FILLED_QTY)) or Decimal(0)
    price = number(field(row, ORDER_PRICE))
    return Entrust(
        entrust_no=str(no).strip(),
        instrument=to_instrument(str(row.get("stock_code") or code)),
        side=side_of(row),
        quantity=quantity,
        filled=filled,
        price=price if price else None,  # a market order shows price 0
        status=status_of(row, quantity, filled),
        raw_status=str(field(row, STATUS, "")),
    )


@dataclass(frozen=True)
class Trade:
    """One row of the day's trades."""

    key: str  # unique for the day
    entrust_no: str
    instrument: str
    side: str
    quantity: Decimal
    price: Decimal
    ts: dt.datetime


def trade(row: Mapping[str, Any], today: dt.date) -> Trade | None:
    """A trade row, or None if it cannot be read as one (no code, quantity or price)."""
    code, qty, price = field(row, CODE), number(field(row, TRADE_QTY)), number(field(row, TRADE_PRICE))
    side = side_of(row)
    if code is None or not qty or price is None or side is None:
        return None
    entrust_no = str(field(row, ENTRUST_NO, "")).strip()
    when = field(row, TRADE_TIME)
    if isinstance(when, int | float) and when > 86400:
        ts = dt.datetime.fromtimestamp(when, CHINA)
    else:
        text = str(when or "00:00:00").strip()
        try:
            clock = dt.time.fromisoformat(text if len(text) != 6 else f"{text[:2]}:{text[2:4]}:{text[4:]}")
        except ValueError:
            clock = dt.time(0, 0)
        ts = dt.datetime.combine(today, clock, CHINA)
    trade_id = field(row, TRADE_ID)
    ident = str(trade_id).strip() if trade_id is not None else f"{entrust_no}/{ts:%H%M%S}/{qty}/{price}"
    return Trade(
        key=f"{today.isoformat()}:{ident}",
        entrust_no=entrust_no,
        instrument=to_instrument(str(row.get("stock_code") or code)),
        side=side,
        quantity=qty,
        price=price,
        ts=ts,
    )


@dataclass(frozen=True)
class Holding:
    """One row of the positions grid."""

    instrument: str
    quantity: Decimal
    sellable: Decimal
    price: Decimal | None


def holding(row: Mapping[str, Any]) -> Holding | None:
    """A position row; miniQMT's price is its market value over its volume."""
    code = field(row, CODE)
    qty = number(field(row, HELD))
    if code is None or qty is None:
        return None
    price = number(field(row, MARKET_PRICE))
    if price is None and qty and (value := number(row.get("market_value"))) is not None:
        price = value / qty
    return Holding(
        instrument=to_instrument(str(row.get("stock_code") or code)),
        quantity=qty,
        sellable=number(field(row, SELLABLE)) or Decimal(0),
        price=price,
    )


def balance(raw: Any) -> tuple[Decimal, Decimal, str | None]:
    """(cash, equity, account id) from the balance: a dict (universal) or a one-element list (miniQMT)."""
    row = raw[0] if isinstance(raw, list) and raw else raw
    if not isinstance(row, Mapping):
        raise ValueError(f"the client's balance is {type(raw).__name__}, not a row")
    cash = number(field(row, CASH)) or number(field(row, AVAILABLE))
    equity = number(field(row, EQUITY))
    if cash is None or equity is None:
        raise ValueError(f"the client's balance has no cash or total assets: {sorted(row)}")
    account = row.get("account_id")
    return cash, equity, str(account) if account is not None else None
