"""MinuteBackedExchange answers every daily question exactly as qlib's 1-minute Exchange does."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from qlib_session import use_bundle

from kubequant.workloads.backtest.minute_exchange import MinuteBackedExchange, end_of_day
from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

pytestmark = pytest.mark.integration

DAYS = 12


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("minute-exchange") / "bundle"
    spec = SampleSpec(
        instruments=30,
        start="2021-06-01",
        end="2021-12-31",
        seed=5,
        freqs=("day", "1min"),
        minute_instruments=30,
        minute_days=DAYS,
    )
    write_sample_bundle(path, spec)
    os.chdir(path.parent)
    use_bundle(path)
    return path


def _exchanges(bundle: Path, **kwargs: Any) -> tuple[Any, Any, list[pd.Timestamp], list[str]]:
    from qlib.backtest.exchange import Exchange

    days = [pd.Timestamp(d) for d in (bundle / "calendars" / "day.txt").read_text().split()[-DAYS:]]
    codes = [
        line.split("\t")[0] for line in (bundle / "instruments" / "intraday.txt").read_text().splitlines()
    ]
    common = {"start_time": days[0], "codes": codes, "open_cost": 0.0005, "close_cost": 0.0015, **kwargs}
    theirs = Exchange(freq="1min", end_time=end_of_day(days[-1]), **common)
    ours = MinuteBackedExchange(end_time=days[-1], **common)
    return theirs, ours, days, codes


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit_threshold": 0.095, "deal_price": "close"},
        {"limit_threshold": 0.095, "deal_price": "vwap"},
        {"limit_threshold": None, "deal_price": "close"},
        {"limit_threshold": ("$change > 0.002", "$change < -0.002"), "deal_price": "close"},
    ],
    ids=["float-limit", "vwap", "no-limit", "expression-limit"],
)
def test_daily_answers_equal_the_minute_exchanges(bundle: Path, kwargs: dict[str, Any]) -> None:
    theirs, ours, days, codes = _exchanges(bundle, **kwargs)
    assert ours.trade_w_adj_price == theirs.trade_w_adj_price
    checked = suspended = limited = 0
    for day in days:
        start, end = day, end_of_day(day)
        for code in codes:
            for direction in (0, 1, None):
                assert ours.is_stock_tradable(code, start, end, direction) == theirs.is_stock_tradable(
                    code, start, end, direction
                ), (code, day, direction)
            if theirs.check_stock_suspended(code, start, end):
                suspended += 1
                assert ours.check_stock_suspended(code, start, end)
                continue
            limited += bool(theirs.check_stock_limit(code, start, end, 1))
            for direction in (0, 1):
                a = ours.get_deal_price(code, start, end, direction)
                b = theirs.get_deal_price(code, start, end, direction)
                assert a == pytest.approx(b, rel=1e-7), (code, day)
            assert ours.get_close(code, start, end) == pytest.approx(
                theirs.get_close(code, start, end), rel=1e-7
            )
            assert ours.get_factor(code, start, end) == pytest.approx(
                theirs.get_factor(code, start, end), rel=1e-7
            )
            assert ours.get_volume(code, start, end) == pytest.approx(
                theirs.get_volume(code, start, end), rel=1e-6
            )
            assert ours.get_amount_of_trade_unit(
                stock_id=code, start_time=start, end_time=end
            ) == pytest.approx(theirs.get_amount_of_trade_unit(stock_id=code, start_time=start, end_time=end))
            checked += 1
    assert checked > 200
    print(f"{kwargs}: {checked} instrument-days compared, {suspended} suspended, {limited} limit-up all day")


def test_minutes_are_the_minute_exchanges_quote(bundle: Path) -> None:
    theirs, ours, days, codes = _exchanges(bundle, limit_threshold=0.095, deal_price="close")
    bars = ours.minutes
    assert len(bars.minutes) == DAYS * 240
    row = bars.row
    for code in codes[:10]:
        quote = theirs.quote_df.xs(code, level="instrument")
        cols = bars.minutes.get_indexer(quote.index)
        np.testing.assert_array_equal(bars.close[row[code], cols], quote["$close"].to_numpy(dtype=np.float64))
        np.testing.assert_array_equal(bars.limit_buy[row[code], cols], quote["limit_buy"].to_numpy())
        np.testing.assert_array_equal(
            bars.volume[row[code], cols], quote["$volume"].to_numpy(dtype=np.float64)
        )
    for day in days:
        lo, hi = bars.day_span(day)
        assert hi - lo == 240


def test_days_of_different_lengths_are_aggregated_like_equal_ones(bundle: Path) -> None:
    """Short sessions (a half day) go through the same reduction: checked against a pandas groupby."""
    from kubequant.workloads.backtest import minute_exchange as mx

    days = [pd.Timestamp(d) for d in (bundle / "calendars" / "day.txt").read_text().split()[-DAYS:]]
    names = ["$close", "$volume", "$factor", "$change"]
    fields = mx.MinuteFields.load(
        {"market": "intraday", "filter_pipe": []}, names, days[0], end_of_day(days[-1])
    )
    buy, sell = mx.limit_flags(fields, "float", 0.095)
    # Uneven "days": the first day in two halves, the others whole, and an empty span.
    spans = [(days[0] - pd.Timedelta(days=1), 0, 0), (days[0] - pd.Timedelta(hours=1), 0, 120)]
    spans += [(days[0], 120, 240)] + [(day, i * 240, (i + 1) * 240) for i, day in enumerate(days) if i]
    got = mx.daily_quote(fields, buy, sell, spans)

    label = np.empty(len(fields.calendar), dtype="datetime64[ns]")
    for day, lo, hi in spans:
        label[lo:hi] = np.datetime64(day)
    inst = np.repeat(np.array(fields.instruments), len(fields.calendar))
    when = np.tile(label, len(fields.instruments))
    long = pd.DataFrame({name: fields.values[name].reshape(-1) for name in names})
    long["limit_buy"], long["limit_sell"] = buy.reshape(-1), sell.reshape(-1)
    long = long[fields.present.reshape(-1)]
    keys = [inst[fields.present.reshape(-1)], when[fields.present.reshape(-1)]]
    grouped = long.groupby(keys)
    want = pd.concat(
        {
            **{name: grouped[name].last() for name in names if name != "$volume"},
            "$volume": grouped["$volume"].sum(),
            "limit_buy": grouped["limit_buy"].all(),
            "limit_sell": grouped["limit_sell"].all(),
        },
        axis=1,
    )[list(got.columns)]
    want.index = want.index.set_names(["instrument", "datetime"])
    pd.testing.assert_frame_equal(got, want, check_index_type=False, check_freq=False, rtol=1e-9)
    assert len(got) == len(fields.instruments) * (DAYS + 1)  # suspended days are rows of NaN, as in qlib
    assert got["$close"].isna().sum() >= 1
