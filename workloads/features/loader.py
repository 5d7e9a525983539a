"""A qlib data loader that computes its expressions with the compiled engine, falling back to qlib.

``CompiledDataLoader`` is qlib's ``QlibDataLoader`` with one step replaced: ``load_group_df``
reads the bundle's ``.bin`` files into a panel and evaluates the fields with numba kernels,
returning the frame ``D.features`` would (same rows, columns, index and float32 values). When a
setting or an expression is outside what the engine reproduces exactly (a ``filter_pipe``,
``inst_processors``, a non-daily frequency, an operator without a kernel, fields with different
file ranges), it defers to qlib's own ``load_group_df`` and logs why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qlib.data.dataset.loader import QlibDataLoader

from kubequant.workloads.features.engine import (
    Panel,
    UnsupportedExpression,
    evaluate,
    needed_days,
    raw_fields,
)

log = logging.getLogger(__name__)


def read_panel(
    features_dir: Path, instruments: list[str], fields: list[str], freq: str, days: tuple[int, int]
) -> Panel:
    """Calendar days ``days`` (inclusive) of ``fields`` from qlib's bin layout (float32, start index first)."""
    n = len(instruments)
    lo, hi = days
    arrays = {f: np.full((n, hi - lo + 1), np.nan, dtype=np.float32) for f in fields}
    first = np.full(n, -1, dtype=np.int64)
    last = np.full(n, -1, dtype=np.int64)
    for i, inst in enumerate(instruments):
        ranges = set()
        for f in fields:
            path = features_dir / inst.lower() / f"{f}.{freq}.bin"
            if not path.exists():
                ranges.add(None)
                continue
            size = path.stat().st_size // 4 - 1
            if size <= 0:
                ranges.add(None)
                continue
            with path.open("rb") as fh:
                start = int(np.fromfile(fh, dtype="<f4", count=1)[0])
                a, b = max(start, lo), min(start + size - 1, hi)
                if a <= b:  # only the days the expressions read
                    fh.seek(4 * (a - start + 1))
                    arrays[f][i, a - lo : b - lo + 1] = np.fromfile(fh, dtype="<f4", count=b - a + 1)
            ranges.add((start, start + size - 1))
        if ranges == {None}:
            continue
        if len(ranges) != 1:
            raise UnsupportedExpression(
                f"instrument {inst}: fields {fields} have different bin ranges {ranges}"
            )
        first[i], last[i] = next(iter(ranges))  # type: ignore[misc]
    return Panel(instruments, arrays, first, last, lo)


class CompiledDataLoader(QlibDataLoader):
    """qlib's QlibDataLoader, with expressions computed by the numba engine when it can."""

    def load_group_df(
        self,
        instruments: Any,
        exprs: list,
        names: list,
        start_time: Any = None,
        end_time: Any = None,
        gp_name: str | None = None,
    ) -> pd.DataFrame:
        try:
            return self._compiled(instruments, exprs, names, start_time, end_time, gp_name)
        except UnsupportedExpression as why:
            log.info("compiled features: using qlib's engine for group %s: %s", gp_name, why)
            return super().load_group_df(instruments, exprs, names, start_time, end_time, gp_name)

    def _compiled(
        self, instruments: Any, exprs: list, names: list, start_time: Any, end_time: Any, gp_name: str | None
    ) -> pd.DataFrame:
        from qlib.config import C
        from qlib.data import D
        from qlib.data.data import Cal, DatasetProvider, ExpressionD
        from qlib.utils import time_to_slc_point

        freq = self.freq[gp_name] if isinstance(self.freq, dict) else self.freq
        inst_processors = (
            self.inst_processors
            if isinstance(self.inst_processors, list)
            else self.inst_processors.get(gp_name, [])
        )
        if self.filter_pipe or inst_processors:
            raise UnsupportedExpression("filter_pipe / inst_processors are applied by qlib's engine")
        if freq != "day":
            raise UnsupportedExpression(f"frequency {freq!r} (only 'day')")
        if not self.swap_level:
            raise UnsupportedExpression("swap_level=False")
        if instruments is None:
            instruments = "all"
        if isinstance(instruments, str):
            instruments = D.instruments(instruments)
        trees = [ExpressionD.get_expression_instance(str(f)) for f in exprs]
        needed: set[str] = set()
        for tree in trees:
            raw_fields(tree, needed)

        # The same instrument list, spans and calendar window qlib's dataset provider would use.
        if isinstance(instruments, dict) and "market" in instruments:
            inst_spans = D.list_instruments(instruments, start_time, end_time, freq=freq, as_list=False)
        else:
            inst_spans = DatasetProvider.get_instruments_d(instruments, freq)
        if isinstance(inst_spans, dict):
            items = sorted(inst_spans.items())
        else:
            items = sorted((inst, None) for inst in inst_spans)
        calendar = Cal.calendar(freq=freq)
        _, _, start_index, end_index = Cal.locate_index(
            time_to_slc_point(start_time), time_to_slc_point(end_time), freq=freq, future=False
        )
        features_dir = Path(C.dpm.get_data_uri(freq)) / "features"
        insts = [inst for inst, _ in items]
        lo, hi = needed_days(trees, start_index, end_index, len(calendar))
        panel = read_panel(features_dir, insts, sorted(needed), freq, (lo, hi))

        # Rows: each instrument's days inside the query window and its bin range, then its spans.
        days = np.arange(lo, hi + 1)
        row_lo = np.maximum(panel.first, start_index)
        row_hi = np.minimum(panel.last, end_index)
        keep = (
            (panel.first[:, None] >= 0)
            & (days[None, :] >= row_lo[:, None])
            & (days[None, :] <= row_hi[:, None])
        )
        cal_values = np.asarray(calendar, dtype="datetime64[ns]")[lo : hi + 1]
        for i, (_, spans) in enumerate(items):
            if spans is None:
                continue
            in_span = np.zeros(days.size, dtype=bool)
            for begin, end in spans:
                in_span |= (cal_values >= np.datetime64(pd.Timestamp(begin))) & (
                    cal_values <= np.datetime64(pd.Timestamp(end))
                )
            keep[i] &= in_span
        # (day, instrument): datetime-major with instruments sorted, as qlib's sort_index leaves it.
        keep_t = keep.T
        day_idx, inst_idx = np.nonzero(keep_t)
        if day_idx.size == 0:
            raise UnsupportedExpression("no rows in the window (qlib builds the empty frame)")
        index = pd.MultiIndex.from_arrays(
            [pd.DatetimeIndex(cal_values[day_idx]), pd.Index(np.asarray(insts, dtype=object)[inst_idx])],
            names=["datetime", "instrument"],
        )
        # One float32 block, filled column by column as the engine finishes each expression: the
        # frame is built without copies and intermediate panels are freed as soon as they are used.
        block = np.empty((len(names), day_idx.size), dtype=np.float32)

        def store(position: int, values: np.ndarray) -> None:
            block[position] = values.T[keep_t]

        evaluate(trees, panel, start_index, end_index, sink=store)
        return pd.DataFrame(block.T, index=index, columns=list(names), copy=False)
