"""The compiled kernels of the execution levels: qlib's slicing rules and ``Exchange`` fill rules, in numba.

``work_bars`` runs the bars of the finest level for a set of parent orders: for each bar and parent
(in the order qlib deals them) the child the slicing strategy makes — qlib's TWAPStrategy,
kubequant's VWAP, qlib's SBBStrategyEMA (``slice_target``) — and its fill by the rules of
``Exchange._calc_trade_info_by_order`` (or ``ImpactExchange``'s): limit flags, the volume cap, the
position and cash limits, rounding, open/close costs, minimum cost, qlib's quadratic impact rate,
the Almgren–Chriss fill price. ``step_targets`` gives a coarser level's children for one bar, which
the levels below then work (``level_stack.py``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

TWAP, VWAP, SBB = 0, 1, 2
MODES = {"twap": TWAP, "vwap": VWAP, "sbb_ema": SBB}
MID, SHORT, LONG = 0, 1, 2  # SBBStrategyBase's trends


@njit(cache=True)
def _round_unit(amount: float, factor: float, unit: float) -> float:  # pragma: no cover - compiled
    """qlib's round_amount_by_trade_unit: whole lots of ``unit`` shares, 0.1 share of slack."""
    if np.isnan(unit):
        return amount
    return (amount * factor + 0.1) // unit * unit / factor


@njit(cache=True)
def _isclose(a: float, b: float) -> bool:  # pragma: no cover - compiled
    return abs(a - b) <= 1e-08 + 1e-05 * abs(b)


@njit(cache=True)
def _fill_price(
    arrival: float, amount: float, volume: float, sigma: float, sign: float, impact: np.ndarray
) -> float:  # pragma: no cover - compiled
    """impact.py's fill price P·(1 + d·f) of ``amount`` in a bar of ``volume`` (impact[0] = 0: none)."""
    if impact[0] == 0.0:
        return arrival
    p = 0.0
    if amount > 0:
        p = amount / volume if (np.isfinite(volume) and volume > 0) else np.nan
    f = impact[1] / 1e4 + impact[2] * sigma * p ** impact[4] + impact[3] * p
    return max(arrival * (1.0 + sign * f), 0.0)


@njit(cache=True)
def slice_target(
    mode: int,
    k: int,
    t: int,
    steps: int,
    amount: np.ndarray,
    remain: np.ndarray,
    lot: np.ndarray,
    expected: np.ndarray,
    trends: np.ndarray,
    state: np.ndarray,
    suspended: bool,
    tradable: bool,
    buy: bool,
) -> float:  # pragma: no cover - compiled
    """The amount of parent ``k``'s child at step ``t`` of ``steps`` (0.0: none), by the strategy's rules.

    TWAP/VWAP: qlib's TWAPStrategy — skip a suspended step, the expected amount after the step
    (equal steps, or the volume profile ``expected``) less what is done, rounded to ``lot`` (NaN: no
    rounding) and clipped to what remains; the last step takes the remainder. SBB: qlib's
    SBBStrategyBase — the trend predicted at even steps (kept in ``state`` for the odd one), skip a
    step that is not tradable, an equal part of what remains (MID) or two parts in the better step of
    the pair, in whole lots rounded up; a sell takes everything left at the last step.
    """
    if mode == SBB:
        if t % 2 == 0:
            pred = trends[k, t]
            state[k] = pred
        else:
            pred = state[k]
        if not tradable:
            return 0.0
        left = remain[k]
        unit = lot[k]
        rest = steps - t
        if pred == MID:
            if np.isnan(unit):
                amt = left / rest
            else:
                cnt = int(left // unit)
                amt = ((cnt + rest - 1) // rest) * unit
        else:
            if np.isnan(unit):
                amt = 2 * left / (rest + 1)
            else:
                cnt = int(left // unit)
                amt = ((cnt + rest) // (rest + 1)) * 2 * unit
        if not buy and left > 1e-05 and (amt < 1e-05 or t == steps - 1):
            amt = left
        amt = min(amt, left)
        if not amt > 1e-05:
            return 0.0
        if pred != MID:
            if t % 2 == 0:
                wanted = (pred == SHORT and not buy) or (pred == LONG and buy)
            else:
                wanted = (pred == SHORT and buy) or (pred == LONG and not buy)
            if not wanted:
                return 0.0
        return amt
    if suspended:
        return 0.0  # the slicing strategy makes no child order in a suspended step
    if mode == TWAP:  # qlib's TWAPStrategy's operation order: amount / steps * (step + 1)
        delta = amount[k] / steps * (t + 1) - (amount[k] - remain[k])
    else:
        delta = amount[k] * expected[k, t] - (amount[k] - remain[k])
    if np.isnan(lot[k]):
        target = delta
    else:
        target = min(np.rint(delta / lot[k]) * lot[k], remain[k])
    if t == steps - 1:
        target = remain[k]
    return target if target > 1e-05 else 0.0


@njit(cache=True)
def step_targets(
    mode: int,
    t: int,
    steps: int,
    stock: np.ndarray,
    is_buy: np.ndarray,
    amount: np.ndarray,
    remain: np.ndarray,
    lot: np.ndarray,
    expected: np.ndarray,
    trends: np.ndarray,
    state: np.ndarray,
    close: np.ndarray,
    limit_buy: np.ndarray,
    limit_sell: np.ndarray,
) -> np.ndarray:  # pragma: no cover - compiled
    """Every parent's child at step ``t`` of a coarser level (bar column ``t`` of the arrays); 0.0: none."""
    out = np.zeros(amount.shape[0])
    for k in range(amount.shape[0]):
        s = stock[k]
        suspended = np.isnan(close[s, t])
        tradable = not (suspended or limit_buy[s, t] or limit_sell[s, t])
        out[k] = slice_target(
            mode, k, t, steps, amount, remain, lot, expected, trends, state, suspended, tradable, is_buy[k]
        )
    return out


@njit(cache=True, error_model="numpy")
def work_bars(
    stock: np.ndarray,
    is_buy: np.ndarray,
    amount: np.ndarray,
    lot: np.ndarray,
    expected: np.ndarray,
    buy_price: np.ndarray,
    sell_price: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    factor: np.ndarray,
    limit_buy: np.ndarray,
    limit_sell: np.ndarray,
    sigma: np.ndarray,
    held: np.ndarray,
    present: np.ndarray,
    cash: float,
    costs: np.ndarray,
    impact: np.ndarray,
    expire: bool,
    mode: int,
    trends: np.ndarray,
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, float
]:  # pragma: no cover - compiled
    """Run the bars of one level for ``n`` parent orders, dealing each child; the children, and the cash after.

    ``mode``: TWAP, VWAP or SBB (qlib's SBBStrategyEMA; ``trends[k, t]``: the EMA trend step ``t`` reads,
    used at even steps; SBB's remaining amount always carries). The arrays are the level's bars
    (1-minute bars, or longer bars as qlib's 1-minute Exchange quotes them).

    Parents ``k`` trade instrument row ``stock[k]`` of the day's (rows × minutes) bars; ``expected[k, t]``
    is the share of the parent expected done after minute ``t`` (unused with ``twap``: the kernel
    takes equal steps in qlib's TWAP operation order); ``lot[k]`` is the parent's trade unit in shares (NaN: no rounding). ``held``/``present`` are the position (updated in place). ``costs``:
    open, close, min cost, qlib's impact_cost, trade unit (NaN: none). ``impact``: enabled (0/1),
    slippage bps, temporary, permanent, beta, max participation (NaN: no cap).
    """
    n = amount.shape[0]
    steps = close.shape[1]
    open_cost, close_cost, min_cost, impact_cost, trade_unit = (
        costs[0],
        costs[1],
        costs[2],
        costs[3],
        costs[4],
    )
    capped = impact[0] != 0.0
    max_part = impact[5]
    size = n * steps
    out_parent = np.empty(size, np.int64)
    out_step = np.empty(size, np.int64)
    out_amount = np.empty(size)
    out_deal = np.empty(size)
    out_price = np.empty(size)
    out_value = np.empty(size)
    out_cost = np.empty(size)
    remain = amount.copy()
    state = np.zeros(n, np.int8)
    count = 0
    for t in range(steps):
        for k in range(n):
            s = stock[k]
            suspended = np.isnan(close[s, t])
            tradable = not (suspended or limit_buy[s, t] or limit_sell[s, t])
            target = slice_target(
                mode,
                k,
                t,
                steps,
                amount,
                remain,
                lot,
                expected,
                trends,
                state,
                suspended,
                tradable,
                is_buy[k],
            )
            if target == 0.0:
                continue
            buy = is_buy[k]
            deal = 0.0
            price = np.nan
            value = 0.0
            cost = 0.0
            if not (limit_buy[s, t] if buy else limit_sell[s, t]):
                arrival = buy_price[s, t] if buy else sell_price[s, t]
                vol = volume[s, t]
                f = factor[s, t]
                sign = 1.0 if buy else -1.0
                deal = target
                if capped:
                    if np.isfinite(vol) and vol > 0:
                        if not np.isnan(max_part):
                            deal = min(deal, max_part * vol)
                    else:
                        deal = 0.0
                total = vol * arrival
                if total == 0.0 or np.isnan(total):
                    adj = impact_cost
                else:
                    adj = impact_cost * (deal * arrival / total) ** 2
                if buy:
                    ratio = open_cost + adj
                    p = _fill_price(arrival, deal, vol, sigma[s], sign, impact)
                    value = deal * p
                    if cash < max(value * ratio, min_cost):
                        deal = 0.0
                    elif cash < value + max(value * ratio, min_cost):
                        affordable = 0.0
                        if cash >= min_cost:
                            if cash >= min_cost / ratio + min_cost:
                                affordable = cash / (1 + ratio) / p
                            else:
                                affordable = (cash - min_cost) / p
                        deal = _round_unit(min(affordable, deal), f, trade_unit)
                    else:
                        deal = _round_unit(deal, f, trade_unit)
                else:
                    ratio = close_cost + adj
                    current = held[s] if present[s] else 0.0
                    if not _isclose(deal, current):
                        deal = _round_unit(min(current, deal), f, trade_unit)
                    p = _fill_price(arrival, deal, vol, sigma[s], sign, impact)
                    value = deal * p
                    if cash + value < max(value * ratio, min_cost):
                        deal = 0.0
                price = _fill_price(arrival, deal, vol, sigma[s], sign, impact)
                value = deal * price
                cost = max(value * ratio, min_cost)
                if value <= 1e-05:
                    cost = 0.0
                if value > 1e-05:
                    shares = value / price
                    if buy:
                        held[s] = held[s] + shares if present[s] else shares
                        present[s] = True
                        cash -= value + cost
                    else:
                        if _isclose(held[s], shares):  # qlib's Position._sell_stock: sold out
                            held[s] = 0.0
                            present[s] = False
                        else:
                            held[s] = held[s] - shares
                        cash += value - cost
            out_parent[count] = k
            out_step[count] = t
            out_amount[count] = target
            out_deal[count] = deal
            out_price[count] = price
            out_value[count] = value
            out_cost[count] = cost
            count += 1
            remain[k] -= target if (expire and mode != SBB) else deal
    return out_parent, out_step, out_amount, out_deal, out_price, out_value, out_cost, count, cash


@njit(cache=True, error_model="numpy")
def slice_day(
    stock: np.ndarray,
    is_buy: np.ndarray,
    amount: np.ndarray,
    lot: np.ndarray,
    expected: np.ndarray,
    buy_price: np.ndarray,
    sell_price: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    factor: np.ndarray,
    limit_buy: np.ndarray,
    limit_sell: np.ndarray,
    sigma: np.ndarray,
    held: np.ndarray,
    present: np.ndarray,
    cash: float,
    costs: np.ndarray,
    impact: np.ndarray,
    expire: bool,
    twap: bool,
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, float
]:  # pragma: no cover - compiled
    """``work_bars`` for TWAP (``twap``) or VWAP slicing of one day's minutes."""
    return work_bars(
        stock,
        is_buy,
        amount,
        lot,
        expected,
        buy_price,
        sell_price,
        close,
        volume,
        factor,
        limit_buy,
        limit_sell,
        sigma,
        held,
        present,
        cash,
        costs,
        impact,
        expire,
        TWAP if twap else VWAP,
        np.zeros((amount.shape[0], 0), np.int8),
    )
