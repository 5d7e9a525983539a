"""The sample bundle's 1-minute bars: qlib reads them, they add up to the daily bars, and qlib can trade on them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from qlib.data import D
from qlib_session import use_bundle as _use_bundle

from kubequant.workloads.data.qlib_format import bundle_checksum
from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle
from kubequant.workloads.data.synthetic import LIMIT

pytestmark = pytest.mark.integration

# Seed 45 puts a limit-up close, a limit-down close and a suspension in the minute window.
SPEC = SampleSpec(
    instruments=10,
    start="2021-01-01",
    end="2021-12-31",
    seed=45,
    freqs=("day", "1min"),
    minute_instruments=10,
    minute_days=10,
)


def use_bundle(path: Path) -> None:
    """``use_bundle``, after closing an experiment an earlier test left open (qlib refuses to re-init then)."""
    from qlib.workflow import R

    if R._provider is not None and R._provider.exp_manager.active_experiment is not None:
        R.end_exp()
    _use_bundle(path)


NAMES = ["open", "high", "low", "close", "volume", "vwap", "amount", "factor", "change"]
FIELDS = [f"${n}" for n in NAMES]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample-minutes") / "bundle"
    write_sample_bundle(out, SPEC)
    return out


@pytest.fixture(scope="module")
def window(bundle: Path) -> pd.DatetimeIndex:
    use_bundle(bundle)
    return pd.DatetimeIndex(D.calendar(freq="day"))[-SPEC.minute_days :]


@pytest.fixture(scope="module")
def minutes(bundle: Path, window: pd.DatetimeIndex) -> pd.DataFrame:
    use_bundle(bundle)
    end = window[-1] + pd.Timedelta("15h")
    bars = D.features(D.instruments("intraday"), FIELDS, start_time=window[0], end_time=end, freq="1min")
    bars.columns = NAMES
    return bars


@pytest.fixture(scope="module")
def days(bundle: Path, window: pd.DatetimeIndex) -> pd.DataFrame:
    use_bundle(bundle)
    bars = D.features(D.instruments("all"), FIELDS, start_time=window[0], end_time=window[-1])
    bars.columns = NAMES
    return bars


def _by_day(minutes: pd.DataFrame) -> pd.core.groupby.DataFrameGroupBy:
    stamps = minutes.index.get_level_values("datetime")
    return minutes.groupby([minutes.index.get_level_values("instrument"), stamps.normalize()])


def test_qlib_reads_240_session_bars_a_day(
    bundle: Path, window: pd.DatetimeIndex, minutes: pd.DataFrame
) -> None:
    use_bundle(bundle)
    cal = pd.DatetimeIndex(
        D.calendar(start_time=window[0], end_time=window[-1] + pd.Timedelta("15h"), freq="1min")
    )
    assert len(cal) == 240 * len(window)
    assert (cal.normalize().value_counts() == 240).all()
    clock = cal.strftime("%H:%M")
    assert clock[0] == "09:30" and clock[119] == "11:29" and clock[120] == "13:00" and clock[-1] == "14:59"
    assert not ((clock >= "11:30") & (clock < "13:00")).any(), "no bar in the lunch break"
    assert not ((clock < "09:30") | (clock >= "15:00")).any()
    assert sorted(minutes.index.get_level_values("instrument").unique()) == [
        f"SYN{i:04d}" for i in range(1, 11)
    ]
    assert len(minutes) == 10 * 240 * len(window)
    manifest = json.loads((bundle / "meta/bundle.json").read_text())
    assert manifest["intraday"]["1min"]["bars"] == len(cal) and manifest["markets"]["intraday"] == 10


def test_minutes_aggregate_to_the_daily_bars(minutes: pd.DataFrame, days: pd.DataFrame) -> None:
    traded = minutes.dropna(subset=["close"])
    g = _by_day(traded)
    agg = pd.DataFrame(
        {
            "open": g["open"].first(),
            "high": g["high"].max(),
            "low": g["low"].min(),
            "close": g["close"].last(),
            "volume": g["volume"].sum(),
            "amount": g["amount"].sum(),
            "factor": g["factor"].first(),
        }
    )
    paid = traded["vwap"].astype("float64") * traded["volume"]
    agg["vwap"] = _by_day(traded.assign(paid=paid))["paid"].sum()
    agg["vwap"] /= agg["volume"]
    agg.index.names = ["instrument", "datetime"]
    daily = days.loc[agg.index]
    assert len(agg) > 80
    for name in ("open", "high", "low", "close", "factor"):  # the same float32 values
        np.testing.assert_array_equal(
            agg[name].to_numpy(np.float32), daily[name].to_numpy(np.float32), err_msg=name
        )
    for name in ("volume", "amount", "vwap"):
        np.testing.assert_allclose(agg[name], daily[name], rtol=2e-6, err_msg=name)
    # Inside every minute: low <= open, close, vwap <= high.
    for name in ("open", "close", "vwap"):
        assert (traded["low"] <= traded[name]).all() and (traded[name] <= traded["high"]).all(), name


def test_suspended_days_have_no_minute_bars(minutes: pd.DataFrame, days: pd.DataFrame) -> None:
    has_bars = _by_day(minutes)["close"].count()
    has_bars.index.names = ["instrument", "datetime"]
    trading = days["close"].notna().loc[has_bars.index]
    assert (~trading).sum() >= 1, "the seed should suspend someone in the window"
    assert (has_bars[~trading] == 0).all() and (has_bars[trading] == 240).all()


def test_change_is_measured_from_the_previous_days_close(minutes: pd.DataFrame, days: pd.DataFrame) -> None:
    close = minutes["close"].astype("float64")
    day = minutes.index.get_level_values("datetime").normalize()
    keys = pd.MultiIndex.from_arrays([minutes.index.get_level_values("instrument"), day])
    previous = (
        days["close"].astype("float64").groupby(level="instrument").transform(lambda s: s.ffill().shift(1))
    )
    reference = previous.reindex(keys).to_numpy()
    both = minutes["change"].notna().to_numpy() & np.isfinite(reference)
    assert both.sum() > 1000
    np.testing.assert_allclose(
        minutes["change"].to_numpy()[both], (close.to_numpy() / reference - 1)[both], atol=2e-6
    )


def test_qlib_flags_every_sealed_minute_as_limited(
    bundle: Path, window: pd.DatetimeIndex, days: pd.DataFrame
) -> None:
    """A day sealed at the limit up cannot be bought in its sealed minutes, nor as a whole day once sealed all day."""
    from qlib.backtest.exchange import Exchange

    sealed = days[(days["change"] >= LIMIT - 1e-6) & (days["close"] == days["high"])]
    assert len(sealed) >= 1
    symbol, day = sealed.index[0]
    exchange = Exchange(
        freq="1min",
        start_time=day,
        end_time=day + pd.Timedelta("15h"),
        codes=[symbol],
        deal_price="close",
        limit_threshold=0.095,
    )
    quote = exchange.quote_df.xs(symbol, level="instrument")
    at_limit = quote["$close"] >= np.float32(sealed.iloc[0]["close"]) - 1e-4
    assert at_limit.sum() >= 10
    assert quote.loc[at_limit, "limit_buy"].all()
    # The flag follows the price: minutes 9.5 % or more above the previous day's close, and no others.
    previous = days["close"].loc[symbol].shift(1).loc[day]
    near = quote["$close"].astype("float64") >= previous * 1.095 - 1e-5
    mismatch = quote.loc[quote["limit_buy"] != near, ["$close", "$change"]]
    assert mismatch.empty, (previous, mismatch)


def test_volume_is_u_shaped(minutes: pd.DataFrame) -> None:
    traded = minutes.dropna(subset=["volume"])
    share = traded["volume"] / _by_day(traded)["volume"].transform("sum")
    by_minute = share.groupby(traded.index.get_level_values("datetime").strftime("%H:%M")).mean()
    first, last = by_minute.iloc[:30].mean(), by_minute.iloc[-30:].mean()
    midday = pd.concat([by_minute.loc["10:30":"11:29"], by_minute.loc["13:30":"14:29"]]).mean()
    assert first > 1.5 * midday and last > 1.5 * midday
    assert by_minute.loc["13:00":"13:04"].mean() > midday  # a burst back from lunch


@pytest.mark.parametrize("direction", [1, -1], ids=["limit-up", "limit-down"])
def test_a_limit_day_sticks_at_the_limit_once_sealed(
    minutes: pd.DataFrame, days: pd.DataFrame, direction: int
) -> None:
    extreme = days["high"] if direction > 0 else days["low"]
    sealed = days[(direction * days["change"] >= LIMIT - 1e-6) & (days["close"] == extreme)]
    assert len(sealed) >= 1, "the seed should close someone at the limit in the window"
    for (symbol, day), bar in sealed.iterrows():
        day_minutes = minutes.loc[symbol].loc[str(day.date())]
        late = day_minutes.iloc[-10:]  # seals happen by 14:50 at the latest
        for name in ("open", "high", "low", "close", "vwap"):
            assert (late[name] == np.float32(bar["close"])).all(), (symbol, day, name)
        # Sealed minutes trade thinly.
        assert late["volume"].mean() < day_minutes["volume"].mean()


def test_same_spec_same_bytes_and_minute_bars_do_not_touch_daily_ones(bundle: Path, tmp_path: Path) -> None:
    again = write_sample_bundle(tmp_path / "again", SPEC)
    assert (
        again.checksum
        == bundle_checksum(bundle)
        == json.loads((bundle / "meta/bundle.json").read_text())["checksum"]
    )
    daily = SampleSpec(instruments=SPEC.instruments, start=SPEC.start, end=SPEC.end, seed=SPEC.seed)
    write_sample_bundle(tmp_path / "daily", daily)
    for file in (tmp_path / "daily").rglob("*.day.bin"):
        assert file.read_bytes() == (bundle / file.relative_to(tmp_path / "daily")).read_bytes()
    # Each instrument's minute bars come from its own random stream: asking for fewer keeps them.
    fewer = SampleSpec(**{**SPEC.__dict__, "minute_instruments": 3})
    write_sample_bundle(tmp_path / "fewer", fewer)
    assert sorted(
        p.name for p in (tmp_path / "fewer/features").iterdir() if (p / "close.1min.bin").exists()
    ) == [
        "syn0001",
        "syn0002",
        "syn0003",
        "synidx",
    ]
    for file in (tmp_path / "fewer/features").rglob("*.1min.bin"):
        assert file.read_bytes() == (bundle / file.relative_to(tmp_path / "fewer")).read_bytes()


def test_cli_adds_minutes_and_refuses_minutes_alone(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kubequant.cli import main

    args = [
        "data",
        "sample",
        "--instruments",
        "4",
        "--years",
        "1",
        "--minute-instruments",
        "2",
        "--minute-days",
        "3",
    ]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b"), "--freq", "day,1min"])
    assert result.exit_code == 0, result.output
    assert "1-minute bars" in result.output and "2 instruments" in result.output
    assert len((tmp_path / "b/calendars/1min.txt").read_text().splitlines()) == 3 * 240
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "c"), "--freq", "1min"])
    assert result.exit_code == 2 and "--freq" in result.output
    assert not (tmp_path / "c").exists()


def test_qlib_exchange_loads_minute_quotes(bundle: Path, window: pd.DatetimeIndex) -> None:
    from qlib.backtest.exchange import Exchange

    use_bundle(bundle)
    codes = ["SYN0001", "SYN0002", "SYN0003"]
    end = window[-1] + pd.Timedelta("15h")
    exchange = Exchange(freq="1min", start_time=window[0], end_time=end, codes=codes, deal_price="close")
    assert len(exchange.quote_df) == len(codes) * 240 * len(window)
    bar = window[1] + pd.Timedelta("10h")  # the 10:00 bar
    price = exchange.get_deal_price("SYN0001", bar, bar + pd.Timedelta("59s"), direction=1)
    expected = D.features(["SYN0001"], ["$close"], bar, bar, freq="1min").iloc[0, 0]
    assert price == pytest.approx(expected)


@pytest.mark.slow
def test_nested_day_to_minute_backtest_runs(bundle: Path, window: pd.DatetimeIndex) -> None:
    """qlib's NestedExecutor (day → 1min, TWAP inside) with TopkDropout outside runs on the bundle."""
    from qlib.backtest import backtest

    use_bundle(bundle)
    codes = D.list_instruments(D.instruments("intraday"), as_list=True)
    index = pd.MultiIndex.from_product([codes, window], names=["instrument", "datetime"])
    signal = pd.Series(np.random.default_rng(0).standard_normal(len(index)), index=index)
    strategy = {
        "class": "TopkDropoutStrategy",
        "module_path": "qlib.contrib.strategy.signal_strategy",
        "kwargs": {"signal": signal, "topk": 4, "n_drop": 1},
    }
    executor = {
        "class": "NestedExecutor",
        "module_path": "qlib.backtest.executor",
        "kwargs": {
            "time_per_step": "day",
            "inner_executor": {
                "class": "SimulatorExecutor",
                "module_path": "qlib.backtest.executor",
                "kwargs": {"time_per_step": "1min", "generate_portfolio_metrics": True},
            },
            "inner_strategy": {"class": "TWAPStrategy", "module_path": "qlib.contrib.strategy.rule_strategy"},
            "generate_portfolio_metrics": True,
        },
    }
    # qlib loads the exchange's quotes through `end_time` as given: a bare date would cut off the
    # last day's minutes (and its trades), so the exchange gets the end of that day's session.
    exchange = {"freq": "1min", "limit_threshold": 0.095, "deal_price": "close", "codes": codes}
    exchange["end_time"] = window[5] + pd.Timedelta("15h")
    exchange |= {"open_cost": 0.0005, "close_cost": 0.0015, "min_cost": 5}
    started = time.perf_counter()
    portfolio, _ = backtest(
        start_time=window[1],
        end_time=window[5],
        strategy=strategy,
        executor=executor,
        benchmark=SPEC.benchmark,
        account=1e7,
        exchange_kwargs=exchange,
    )
    elapsed = time.perf_counter() - started
    daily, minute = portfolio["1day"][0], portfolio["1min"][0]
    assert list(daily.index) == list(window[1:6])
    assert daily["turnover"].iloc[0] > 0.5, "the first day buys the top 4"
    assert (daily["turnover"] > 0).all(), "every day trades, the last one too"
    assert (daily["cost"] > 0).any() and daily["account"].notna().all()
    assert len(minute) == 240 * 5 and minute.index[0] == window[1] + pd.Timedelta("9h30min")
    assert elapsed < 120
