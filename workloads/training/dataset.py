"""The dataset a TrainingJob learns from: qlib initialised on the bundle, the handler over the universe, segments."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubequant.api.modules import DEFAULT_ALLOWED_MODULES
from kubequant.api.training import TrainingJobSpec
from kubequant.errors import ConfigError, DataError
from kubequant.workloads.backtest.qlib_config import class_config, handler_module
from kubequant.workloads.data.bundle import resolve_bundle

FIELD = "spec.dataset"
_SCRATCH: Path | None = None


def _scratch() -> Path:
    """One folder per process for qlib's MLflow file store, removed at exit."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = Path(tempfile.mkdtemp(prefix="kubequant-train-mlruns-"))
        atexit.register(shutil.rmtree, _SCRATCH, True)
    return _SCRATCH


def init_qlib_for(bundle: Path, region: str) -> None:
    """Initialise qlib on ``bundle`` exactly as the backtest runner does (caches off, MLflow in a scratch dir)."""
    from kubequant.workloads.backtest.runner import init_qlib

    init_qlib(bundle, region, _scratch())


def handler_config(spec: TrainingJobSpec) -> dict[str, Any]:
    """qlib's handler config: over train.start..test.end, fitted on train, over the spec's universe."""
    seg = spec.dataset.segments
    return class_config(
        spec.dataset.handler,
        handler_module(spec.dataset),  # the compiled handler under engine auto
        f"{FIELD}.handler",
        start_time=str(seg.train.start),
        end_time=str(seg.test.end),
        fit_start_time=str(seg.train.start),
        fit_end_time=str(seg.train.end),
        instruments=spec.universe.resolved_market(),
    )


def segments_config(spec: TrainingJobSpec) -> dict[str, tuple[str, str]]:
    """The three segments as qlib's DatasetH wants them."""
    seg = spec.dataset.segments
    return {
        name: (str(getattr(seg, name).start), str(getattr(seg, name).end))
        for name in ("train", "valid", "test")
    }


def check_bundle(spec: TrainingJobSpec, bundle: Path) -> None:
    """Every segment lies in the bundle's calendar and the market exists: one clear line instead of a qlib trace."""
    from kubequant.workloads.backtest import preflight

    opened = preflight.Bundle.open(bundle)
    for name in ("train", "valid", "test"):
        # The label looks two days ahead; the test segment's last days have none and are dropped by qlib.
        preflight.check_range(opened, getattr(spec.dataset.segments, name), f"{FIELD}.segments.{name}", False)
    market = spec.universe.resolved_market()
    if isinstance(market, str):
        opened.market_members(market)
    else:
        missing = [code for code in market if not opened.has_instrument(code)]
        if missing:
            raise ConfigError(
                f"instruments not in the bundle: {', '.join(missing[:5])}",
                where="spec.universe.instruments",
                fix="list codes the bundle has (see its instruments/all.txt)",
            )


def load_dataset(
    spec: TrainingJobSpec,
    data_path: Path | None = None,
    allowed_modules: Sequence[str] = DEFAULT_ALLOWED_MODULES,
) -> Any:
    """qlib's DatasetH of the spec (features and label computed once, in this process)."""
    from kubequant.workloads.backtest.import_guard import guarded_imports
    from kubequant.workloads.backtest.signal import init_class

    bundle = resolve_bundle(spec.data, data_path)
    check_bundle(spec, bundle)
    init_qlib_for(bundle, spec.data.region)
    config = {
        "class": "DatasetH",
        "module_path": "qlib.data.dataset",
        "kwargs": {"handler": handler_config(spec), "segments": segments_config(spec)},
    }
    with guarded_imports(allowed_modules):
        dataset = init_class(config, f"{FIELD}.handler")
    train = dataset.prepare("train", col_set=["feature", "label"])
    if train.empty:
        raise DataError(
            "the train segment has no rows for this universe",
            where=f"{FIELD}.segments.train",
            fix="check the period and spec.universe against the bundle",
        )
    return dataset


def bundle_fingerprint(bundle: Path) -> str:
    """The bundle's content checksum: the one kubequant recorded when it wrote it, else computed now."""
    from kubequant.workloads.data.qlib_format import MANIFEST, bundle_checksum

    try:
        recorded = json.loads((bundle / MANIFEST).read_text()).get("checksum")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, str) and recorded:
        return recorded
    return bundle_checksum(bundle)
