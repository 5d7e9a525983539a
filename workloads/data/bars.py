"""Raw fields of a qlib bundle read straight from its ``.bin`` files: the frame ``D.features`` gives, faster.

For raw fields (``$close``, ``$volume``, ...) qlib's ``D.features`` is a file read dressed as an expression
evaluation: one task per instrument (in worker processes), a pandas Series per field, a DataFrame per
instrument, then a concat. ``read_fields`` memory-maps each field's file (qlib's layout: little-endian
float32, the first value the index of its first day on the calendar), copies the requested window into one
array per field and builds the same frame at once:

- rows: for each instrument, the calendar days in ``[start, end]`` on which at least one of the fields has
  a value in its file (qlib's union of the fields' series), inside the instrument's listing spans when
  ``instruments`` is a market config (an explicit list has no spans, as in ``D.features``);
- index ``(instrument, datetime)``, instruments sorted, empty ones left out; columns the fields as given;
  float32 values.

It answers only what it reproduces exactly: raw fields on qlib's local file storage, no duplicates.
``BundleDatasetProvider`` plugs it in where qlib expects a dataset provider (``qlib.init(dataset_provider=
DATASET_PROVIDER)``), so every ``D.features`` of a run uses it and anything else (expressions, a
client/server provider, another storage) still goes through qlib's own path.
``tests/integration/test_bundle_bars.py`` holds the frames equal.
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qlib.data.data import LocalDatasetProvider

RAW_FIELD = re.compile(r"^\$[A-Za-z_]\w*$")
LOCAL_FEATURE_PROVIDER = "LocalFeatureProvider"
FILE_STORAGE = "FileFeatureStorage"


def is_raw(field: str) -> bool:
    """A field that names a file of the bundle (``$close``), not an expression over fields."""
    return bool(RAW_FIELD.match(field))


@dataclass(frozen=True)
class FieldPanel:
    """``fields`` of ``instruments`` over calendar indexes ``first..last``: one row per instrument.

    ``values[f][i, t]`` is the file's value on calendar day ``first + t`` (NaN outside its range);
    ``has_row[i, t]`` says whether qlib would give instrument ``i`` a row that day (any field in range).
    """

    instruments: tuple[str, ...]
    fields: tuple[str, ...]
    first: int
    values: dict[str, np.ndarray]
    has_row: np.ndarray


def _mapped_window(path: str, first: int, last: int) -> tuple[int, np.ndarray] | None:
    """(first calendar index, values) of the file's part inside ``first..last``; None if none (or no file).

    The file is memory-mapped (``mmap`` directly: ``numpy.memmap`` costs ~0.3 ms of path handling per
    file, more than the read) and only the window's pages are touched.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None  # qlib: an empty series
    try:
        size = os.fstat(fd).st_size // 4
        if size < 2:
            return None
        with mmap.mmap(fd, size * 4, prot=mmap.PROT_READ) as mapped:
            stored = np.frombuffer(mapped, dtype="<f4")
            start = int(stored[0])
            a, b = max(start, first), min(start + size - 2, last)
            window = stored[a - start + 1 : b - start + 2].copy() if a <= b else None
            del stored  # release the buffer before the map closes
        return None if window is None else (a, window)
    finally:
        os.close(fd)


def read_panel(
    features_dir: Path, instruments: Sequence[str], fields: Sequence[str], freq: str, first: int, last: int
) -> FieldPanel:
    """Calendar indexes ``first..last`` (inclusive) of raw ``fields`` (``$close`` or ``close``), memory-mapped."""
    n, width = len(instruments), max(last - first + 1, 0)
    names = [f.lstrip("$") for f in fields]
    values = {f: np.full((n, width), np.nan, dtype=np.float32) for f in fields}
    has_row = np.zeros((n, width), dtype=bool)
    from qlib.utils import code_to_fname

    for i, inst in enumerate(instruments):
        folder = os.path.join(features_dir, code_to_fname(inst).lower())
        for field, name in zip(fields, names, strict=True):
            window = _mapped_window(os.path.join(folder, f"{name.lower()}.{freq}.bin"), first, last)
            if window is None:
                continue
            a, stored = window
            values[field][i, a - first : a - first + len(stored)] = stored
            has_row[i, a - first : a - first + len(stored)] = True
    return FieldPanel(tuple(instruments), tuple(fields), first, values, has_row)


def local_features_dir(freq: str) -> Path | None:
    """The ``features`` folder of qlib's current bundle for ``freq``, or None when qlib reads elsewhere.

    None means: not qlib's local feature provider with its file storage (a client/server setup, another
    backend), where only qlib knows how to read.
    """
    from qlib.config import C

    provider = C.get("feature_provider")
    provider_class = provider if isinstance(provider, str) else (provider or {}).get("class")
    if provider_class != LOCAL_FEATURE_PROVIDER:
        return None
    backend = (provider.get("kwargs", {}) if isinstance(provider, dict) else {}).get("backend", {})
    if backend and backend.get("class", FILE_STORAGE) != FILE_STORAGE:
        return None
    try:
        uri = C.dpm.get_data_uri(freq)
    except Exception:  # an unknown freq: qlib's own path says so in its words
        return None
    path = Path(uri) / "features"
    return path if path.is_dir() else None


def _instrument_spans(instruments: Any, freq: str) -> dict[str, list[tuple[Any, Any]] | None] | None:
    """Each instrument with its listing spans (a market config) or None (a list): qlib's get_instruments_d."""
    if isinstance(instruments, str):
        return None  # qlib refuses a bare string; let it say so
    if isinstance(instruments, dict):
        if "market" not in instruments:
            return None  # {instrument: spans} given by hand: rare, left to qlib
        from qlib.data import D

        return dict(D.list_instruments(instruments, freq=freq, as_list=False))
    if isinstance(instruments, Iterable):
        return dict.fromkeys(str(i) for i in instruments)
    return None


def _empty(fields: list[str], dtype: Any = None) -> pd.DataFrame:
    index = pd.MultiIndex.from_arrays([[], []], names=("instrument", "datetime"))
    return pd.DataFrame(index=index, columns=fields, dtype=dtype)


def read_fields(
    instruments: Any, fields: Sequence[str], start_time: Any = None, end_time: Any = None, freq: str = "day"
) -> pd.DataFrame | None:
    """``D.features(instruments, fields, start_time, end_time, freq)`` read from the files; None if it can't be.

    None: fields that are expressions or repeat, instruments given as ``{code: spans}``, or a bundle qlib
    does not read from local files. The caller then asks qlib (``BundleDatasetProvider`` does).
    """
    from qlib.data.data import Cal

    names = [str(f) for f in fields]
    if not names or len(set(names)) != len(names) or not all(is_raw(f) for f in names):
        return None
    features_dir = local_features_dir(freq)
    spans = _instrument_spans(instruments, freq) if features_dir is not None else None
    if features_dir is None or spans is None:
        return None
    calendar = Cal.calendar(start_time, end_time, freq)
    if len(calendar) == 0:
        return _empty(names)
    _, _, first, last = Cal.locate_index(calendar[0], calendar[-1], freq=freq, future=False)
    codes = sorted(spans)
    panel = read_panel(features_dir, codes, names, freq, first, last)
    days = pd.DatetimeIndex(Cal.calendar(freq=freq)[first : last + 1])
    keep = panel.has_row
    stamps = days.to_numpy()
    for i, code in enumerate(codes):
        listed = spans[code]
        if listed is None or not keep[i].any():
            continue
        inside = np.zeros(len(days), dtype=bool)
        for begin, end in listed:
            inside |= (stamps >= np.datetime64(pd.Timestamp(begin))) & (
                stamps <= np.datetime64(pd.Timestamp(end))
            )
        keep[i] &= inside
    rows, cols = np.nonzero(keep)  # row-major: instrument by instrument, days ascending
    if len(rows) == 0:
        return _empty(names, np.float32)
    index = pd.MultiIndex(
        levels=[pd.Index(codes), days], codes=[rows, cols], names=["instrument", "datetime"]
    ).remove_unused_levels()
    return pd.DataFrame({f: panel.values[f][keep] for f in names}, index=index)


class BundleDatasetProvider(LocalDatasetProvider):  # type: ignore[misc]
    """qlib's local dataset provider, reading raw fields straight from the files (``read_fields``).

    Set it with ``qlib.init(dataset_provider=DATASET_PROVIDER)``: every ``D.features`` of the process
    (the Exchange's quote, the paper broker's bars, the fill measures) then takes the fast path when it
    can and qlib's own path otherwise, with the same frame either way.
    """

    def dataset(
        self,
        instruments: Any,
        fields: Any,
        start_time: Any = None,
        end_time: Any = None,
        freq: str = "day",
        inst_processors: Any = (),
    ) -> pd.DataFrame:
        if self.align_time and not inst_processors:
            frame = read_fields(instruments, list(fields), start_time, end_time, freq)
            if frame is not None:
                return frame
        return super().dataset(
            instruments, fields, start_time, end_time, freq, inst_processors=list(inst_processors)
        )


DATASET_PROVIDER = {"class": "BundleDatasetProvider", "module_path": "kubequant.workloads.data.bars"}
