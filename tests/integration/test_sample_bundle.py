"""The synthetic sample bundle: deterministic, readable by qlib, and shaped like an A-share market."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from qlib.data import D
from qlib_session import use_bundle

from kubequant.errors import ValidationError
from kubequant.workloads.data.qlib_format import bundle_checksum, read_feature
from kubequant.workloads.data.sample import SampleSpec, ensure_sample_bundle, write_sample_bundle

pytestmark = pytest.mark.integration

SPEC = SampleSpec(instruments=20, start="2021-01-01", end="2021-12-31", seed=7)
FIELDS = ["$open", "$high", "$low", "$close", "$volume", "$vwap", "$amount", "$factor", "$change"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "bundle"
    write_sample_bundle(out, SPEC)
    return out


@pytest.fixture(scope="module")
def bars(bundle: Path) -> pd.DataFrame:
    use_bundle(bundle)
    return D.features(D.instruments("all"), FIELDS, start_time=SPEC.start, end_time=SPEC.end)


def test_same_seed_same_bytes_other_seed_other_bytes(bundle: Path, tmp_path: Path) -> None:
    again = write_sample_bundle(tmp_path / "again", SPEC)
    manifest = json.loads((bundle / "meta/bundle.json").read_text())
    assert again.checksum == manifest["checksum"] == bundle_checksum(bundle)
    assert (tmp_path / "again/meta/bundle.json").read_bytes() == (bundle / "meta/bundle.json").read_bytes()
    other = write_sample_bundle(
        tmp_path / "other", SampleSpec(instruments=20, start=SPEC.start, end=SPEC.end, seed=8)
    )
    assert other.checksum != again.checksum


def test_summary_describes_the_bundle(tmp_path: Path) -> None:
    summary = write_sample_bundle(
        tmp_path / "b", SampleSpec(instruments=3, start="2021-01-01", end="2021-03-31")
    )
    text = summary.describe()
    assert summary.instruments == 3 and summary.days > 50
    for part in (
        "3 instruments",
        f"{summary.days} trading days",
        "2021-01-04",
        "2021-03-31",
        str(tmp_path / "b"),
    ):
        assert part in text


def test_qlib_reads_every_field_for_every_instrument(bars: pd.DataFrame) -> None:
    instruments = bars.index.get_level_values("instrument").unique()
    assert sorted(instruments) == [f"SYN{i:04d}" for i in range(1, 21)]
    assert list(bars.columns) == FIELDS
    assert bars["$close"].notna().mean() > 0.95


def test_cli_generates_a_bundle(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kubequant.cli import main

    result = CliRunner().invoke(
        main, ["data", "sample", "--out", str(tmp_path / "b"), "--instruments", "4", "--years", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "4 instruments" in result.output and "2020-12-31" in result.output
    manifest = json.loads((tmp_path / "b/meta/bundle.json").read_text())
    assert manifest["spec"] == SampleSpec(instruments=4, end="2020-12-31").to_dict()


def test_calendar_is_weekdays_without_fixed_holidays(bundle: Path) -> None:
    use_bundle(bundle)
    days = pd.DatetimeIndex(D.calendar(start_time=SPEC.start, end_time=SPEC.end))
    assert (days.dayofweek < 5).all()
    assert pd.Timestamp("2021-01-01") not in days and pd.Timestamp("2021-10-04") not in days
    assert 230 < len(days) < 262


def test_benchmark_reads_but_is_not_in_the_universe(bundle: Path) -> None:
    use_bundle(bundle)
    assert "SYNIDX" not in D.list_instruments(D.instruments("all"), as_list=True)
    index = D.features(["SYNIDX"], ["$close", "$change"], start_time=SPEC.start, end_time=SPEC.end)
    assert len(index) == len(D.calendar(start_time=SPEC.start, end_time=SPEC.end))
    assert index["$close"].notna().all() and (index["$close"] > 0).all()


def test_price_limits_are_hit_and_never_exceeded(bars: pd.DataFrame) -> None:
    change = bars["$change"].dropna()
    assert change.abs().max() <= 0.1 + 1e-6
    assert (change >= 0.0999).sum() > 0 and (change <= -0.0999).sum() > 0
    # qlib's exchange treats |$change| >= 0.095 as limit-locked; some days must be.
    assert (change.abs() >= 0.095).mean() < 0.02


def test_change_is_close_over_previous_close(bars: pd.DataFrame) -> None:
    close = bars["$close"].astype("float64")
    prev = close.groupby(level="instrument").transform(lambda s: s.ffill().shift(1))
    expected = close / prev - 1
    both = expected.notna() & bars["$change"].notna()
    np.testing.assert_allclose(bars["$change"][both], expected[both], atol=2e-6)
    assert (bars["$change"].isna() == (close.isna() | prev.isna())).all()


def test_ohlc_is_consistent(bars: pd.DataFrame) -> None:
    ok = bars.dropna(subset=["$close"])
    assert (ok["$high"] >= ok[["$open", "$close"]].max(axis=1)).all()
    assert (ok["$low"] <= ok[["$open", "$close"]].min(axis=1)).all()
    assert ((ok["$vwap"] >= ok["$low"]) & (ok["$vwap"] <= ok["$high"])).all()
    assert (ok["$volume"] > 0).all()


def test_suspended_days_are_nan_in_every_field(bars: pd.DataFrame) -> None:
    suspended = bars["$close"].isna()
    assert suspended.sum() > 0, "the sample has suspensions"
    assert bars[suspended].isna().all().all()


def test_factor_jumps_and_raw_volume_is_in_lots(bars: pd.DataFrame) -> None:
    ok = bars.dropna(subset=["$close"])
    jumps = ok["$factor"].groupby(level="instrument").nunique()
    assert (jumps > 1).any(), "some instruments have splits or dividends"
    # Adjusted prices stay continuous across a jump: the raw price (close / factor) is what moves.
    raw_volume = (ok["$volume"] * ok["$factor"]).astype("float64")
    np.testing.assert_allclose(raw_volume, np.round(raw_volume / 100) * 100, rtol=1e-5)
    np.testing.assert_allclose(ok["$amount"], ok["$volume"] * ok["$vwap"], rtol=1e-5)


def test_feature_files_span_each_instruments_listing(bundle: Path) -> None:
    calendar = (bundle / "calendars/day.txt").read_text().split()
    for line in (bundle / "instruments/all.txt").read_text().splitlines():
        symbol, start, end = line.split("\t")
        first, values = read_feature(bundle / f"features/{symbol.lower()}/close.day.bin")
        assert calendar[first] == start and calendar[first + len(values) - 1] == end
        assert np.isfinite(values[0]) and np.isfinite(values[-1])


def test_sectors_are_written(bundle: Path) -> None:
    sectors = pd.read_csv(bundle / "meta/sectors.csv")
    assert list(sectors.columns) == ["symbol", "sector"]
    assert len(sectors) == 20 and sectors["sector"].nunique() > 3


def test_from_cli_years() -> None:
    assert SampleSpec.from_cli(instruments=5, years=2, seed=1) == SampleSpec(5, "2020-01-01", "2021-12-31", 1)
    assert SampleSpec.from_cli(instruments=300, years=None, seed=42) == SampleSpec()
    with pytest.raises(ValidationError):
        SampleSpec(instruments=0)
    with pytest.raises(ValidationError):
        SampleSpec(start="2021-01-01", end="2020-01-01")


def test_ensure_generates_once_and_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SampleSpec(instruments=3, start="2021-01-01", end="2021-02-28")
    monkeypatch.setenv("KUBEQUANT_CACHE_DIR", str(tmp_path / "env-cache"))
    path = ensure_sample_bundle(spec)
    assert path == tmp_path / "env-cache" / "data" / f"sample-{spec.short_hash()}"
    stamp = (path / "meta/bundle.json").stat().st_mtime_ns
    assert ensure_sample_bundle(spec) == path
    assert (path / "meta/bundle.json").stat().st_mtime_ns == stamp
    explicit = ensure_sample_bundle(spec, cache_dir=tmp_path / "other")
    assert explicit.parent == tmp_path / "other" / "data"
    assert bundle_checksum(explicit) == bundle_checksum(path)


def test_ensure_is_safe_when_two_processes_race(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from kubequant.workloads.data.sample import SampleSpec, ensure_sample_bundle
        spec = SampleSpec(instruments=50, start="2020-01-01", end="2020-12-31")
        print(ensure_sample_bundle(spec, cache_dir=Path({str(tmp_path)!r})))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outputs)) == 1
    path = Path(outputs[0])
    assert json.loads((path / "meta/bundle.json").read_text())["checksum"] == bundle_checksum(path)
    assert sorted(p.name for p in (tmp_path / "data").iterdir() if not p.name.endswith(".lock")) == [
        path.name
    ]
