"""Each operator Alpha158 uses, compiled vs qlib's expression engine, on hand-made series.

The bundle holds the awkward cases: a constant stock, zero-volume days, suspended (NaN) bars,
a stock listed late (short history), one with three bars, unchanged closes, and a query window
that starts after the data does (so look-back windows reach before it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feature_frames import assert_frames_match

from kubequant.workloads.data.qlib_format import encode_feature

pytestmark = [pytest.mark.integration]

DAYS = pd.bdate_range("2021-01-04", periods=140)
FIELDS = ("open", "high", "low", "close", "volume", "vwap", "factor")


def _bars(close: np.ndarray, volume: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    spread = np.abs(rng.normal(0, 0.01, close.size)) * close
    open_ = close * (1 + rng.normal(0, 0.005, close.size))
    high = np.fmax(np.fmax(open_, close) + spread, close)
    low = np.fmin(np.fmin(open_, close) - spread, close)
    vwap = (open_ + high + low + close) / 4
    return {
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": volume,
        "vwap": vwap,
        "factor": np.ones(close.size),
    }


def _instruments() -> dict[str, tuple[int, dict[str, np.ndarray]]]:
    """symbol → (first day index, bars from that day)."""
    rng = np.random.default_rng(7)
    n = len(DAYS)
    walk = 20 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    vol = rng.integers(1_000, 50_000, n).astype(float)
    out: dict[str, tuple[int, dict[str, np.ndarray]]] = {}
    out["WALK"] = (0, _bars(walk, vol, rng))

    const = {f: np.full(n, 10.0) for f in FIELDS}
    const["volume"] = np.full(n, 5_000.0)
    const["factor"] = np.ones(n)
    out["CONST"] = (0, const)

    zero_vol = vol.copy()
    zero_vol[10:25] = 0.0  # a long run of zero volume: divisions by zero and log(0)
    zero_vol[40] = 0.0
    zero_vol[70:73] = 0.0
    out["ZEROV"] = (0, _bars(walk * 1.5, zero_vol, rng))

    gaps = _bars(walk * 0.7, vol, rng)
    for lo, hi in ((5, 9), (30, 95), (100, 101), (120, 125)):  # suspended: every field NaN
        for f in FIELDS:
            gaps[f][lo:hi] = np.nan
    out["GAPS"] = (0, gaps)

    flat_close = np.round(walk, 0)  # many unchanged closes: zero diffs, ties in ranks
    flat_close[50:80] = flat_close[50]
    flat = _bars(flat_close, vol, rng)
    flat["high"][50:80] = flat["low"][50:80] = flat["open"][50:80] = flat_close[50]
    out["FLAT"] = (0, flat)

    late = _bars(walk[:35] * 3, vol[:35], rng)  # listed 35 days before the end
    out["LATE"] = (n - 35, late)
    short = _bars(walk[:3], vol[:3], rng)  # three bars only
    out["SHORT"] = (n - 3, short)
    return out


@pytest.fixture(scope="module")
def handmade_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("features-handmade")
    (root / "calendars").mkdir()
    (root / "calendars" / "day.txt").write_text("".join(f"{d:%Y-%m-%d}\n" for d in DAYS))
    (root / "instruments").mkdir()
    lines = []
    for symbol, (first, bars) in _instruments().items():
        folder = root / "features" / symbol.lower()
        folder.mkdir(parents=True)
        for name, values in bars.items():
            (folder / f"{name}.day.bin").write_bytes(encode_feature(first, values.astype(np.float32)))
        last = first + len(bars["close"]) - 1
        lines.append(f"{symbol}\t{DAYS[first]:%Y-%m-%d}\t{DAYS[last]:%Y-%m-%d}\n")
    (root / "instruments" / "all.txt").write_text("".join(lines))
    return root


def _both(exprs: list[str], start: str | None, end: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    from qlib.data.dataset.loader import QlibDataLoader

    from kubequant.workloads.features.loader import CompiledDataLoader

    names = [f"F{i}" for i in range(len(exprs))]
    config = {"feature": (exprs, names)}
    expected = QlibDataLoader(config=config).load_group_df("all", exprs, names, start, end, "feature")
    # _compiled, not load_group_df: a silent fallback to qlib would make this test pass vacuously.
    got = CompiledDataLoader(config=config)._compiled("all", exprs, names, start, end, "feature")
    return expected, got


OPERATORS = [
    "Ref($close, 1)/$close",
    "Ref($close, -2)/Ref($close, -1) - 1",
    "Mean($close, {w})/$close",
    "Sum(Greater($close-Ref($close, 1), 0), {w})/(Sum(Abs($close-Ref($close, 1)), {w})+1e-12)",
    "Std($close, {w})/$close",
    "Std($volume, {w})/($volume+1e-12)",
    "Slope($close, {w})/$close",
    "Rsquare($close, {w})",
    "Resi($close, {w})/$close",
    "Max($high, {w})/$close",
    "Min($low, {w})/$close",
    "Quantile($close, {w}, 0.8)/$close",
    "Quantile($close, {w}, 0.2)/$close",
    "Rank($close, {w})",
    "IdxMax($high, {w})/{w}",
    "IdxMin($low, {w})/{w}",
    "Corr($close, Log($volume+1), {w})",
    "Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), {w})",
    "Mean($close>Ref($close, 1), {w})-Mean($close<Ref($close, 1), {w})",
    "Std(Abs($close/Ref($close, 1)-1)*$volume, {w})/(Mean(Abs($close/Ref($close, 1)-1)*$volume, {w})+1e-12)",
    "($close-Min($low, {w}))/(Max($high, {w})-Min($low, {w})+1e-12)",
    "(Less($open, $close)-$low)/($high-$low+1e-12)",
    "Mean($volume, {w})/($volume+1e-12)",
    "Log($volume/Ref($volume, 1)+1)",
]


@pytest.mark.parametrize("window", [5, 20, 60])
@pytest.mark.parametrize("start", [None, "2021-03-01"])
def test_each_operator_matches_qlib(
    handmade_bundle: Path, use_qlib: Callable[[Path], None], window: int, start: str | None
) -> None:
    use_qlib(handmade_bundle)
    exprs = [op.format(w=window) for op in OPERATORS]
    expected, got = _both(exprs, start, None)
    assert len(expected) > 0
    # the awkward cases really are there: infinities from zero volume, NaNs from suspensions
    assert np.isinf(expected.to_numpy()).any()
    assert np.isnan(expected.to_numpy()).any()
    for column, expr in zip(expected.columns, exprs, strict=True):
        try:
            assert_frames_match(expected[[column]], got[[column]])
        except AssertionError as err:
            raise AssertionError(f"{expr}: {err}") from None


def test_whole_alpha158_config_on_handmade_series(
    handmade_bundle: Path, use_qlib: Callable[[Path], None]
) -> None:
    from qlib.contrib.data.handler import Alpha158

    use_qlib(handmade_bundle)
    exprs, _ = Alpha158.get_feature_config(None)  # type: ignore[arg-type]
    expected, got = _both(list(exprs), "2021-02-15", "2021-07-01")
    assert_frames_match(expected, got)


def test_instrument_list_and_a_window_ending_before_the_data(
    handmade_bundle: Path, use_qlib: Callable[[Path], None]
) -> None:
    """A plain list (no spans; an unknown code has no rows) and a label reading past end_time."""
    from qlib.data.dataset.loader import QlibDataLoader

    from kubequant.workloads.features.loader import CompiledDataLoader

    use_qlib(handmade_bundle)
    exprs = [
        "Ref($close, -2)/Ref($close, -1) - 1",
        "Mean($close, 10)/$close",
        "Corr($close, Log($volume+1), 5)",
    ]
    names = ["LABEL0", "MA10", "CORR5"]
    codes = ["WALK", "GAPS", "LATE", "NOPE"]
    config = {"label": (exprs, names)}
    start, end = "2021-02-01", DAYS[-2].strftime("%Y-%m-%d")
    expected = QlibDataLoader(config=config).load_group_df(codes, exprs, names, start, end, "label")
    got = CompiledDataLoader(config=config)._compiled(codes, exprs, names, start, end, "label")
    assert set(expected.index.get_level_values("instrument")) == {"WALK", "GAPS", "LATE"}
    assert expected["LABEL0"].notna().any() and expected["LABEL0"].isna().any()
    assert_frames_match(expected, got)
