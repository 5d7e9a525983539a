"""The scores a Backtest trades on: a model trained in the run, a TrainingJob's model artifact, or a file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kubequant.api.backtest import BacktestSpec, InlineModel
from kubequant.errors import ConfigError, DataError
from kubequant.workloads.backtest.qlib_config import DEFAULT_LABEL, dataset_config, model_config


@dataclass
class Signal:
    """Scores indexed by (datetime, instrument), and the label they are judged against for IC."""

    scores: pd.Series
    label: pd.Series | None
    model: Any = None


def init_class(config: dict[str, Any], field: str) -> Any:
    """qlib's init_instance_by_config, with a clear error when the class cannot be imported."""
    from qlib.utils import init_instance_by_config

    try:
        return init_instance_by_config(config)
    except (ModuleNotFoundError, AttributeError) as err:
        raise ConfigError(
            f"cannot import {config['module_path']}.{config['class']} ({err})",
            where=f"{field}.class",
            fix="check the class name and module, and that the package is installed",
        ) from err
    except TypeError as err:
        raise ConfigError(
            f"bad kwargs for {config['class']}: {err}",
            where=f"{field}.kwargs",
            fix="check the class's arguments",
        ) from err


def train_and_predict(model_spec: InlineModel, market: str | list[str], progress: Any) -> Signal:
    """Fit the model on train (early-stopping on valid) and predict the test segment, as qlib's workflow does."""
    from qlib.data.dataset.handler import DataHandlerLP

    progress("features", f"computing {model_spec.handler.class_name} features")
    dataset = init_class(dataset_config(model_spec, market), "spec.signal.model.handler")
    model = init_class(model_config(model_spec), "spec.signal.model.model")
    progress("train", f"training {model_spec.model.class_name}")
    model.fit(dataset)
    progress("predict", "predicting the test segment")
    scores = model.predict(dataset, segment="test")
    if isinstance(scores, pd.DataFrame):
        scores = scores.iloc[:, 0]
    label = dataset.prepare("test", col_set="label", data_key=DataHandlerLP.DK_R)
    return Signal(
        scores=scores, label=label.iloc[:, 0] if isinstance(label, pd.DataFrame) else label, model=model
    )


_COLUMN_ALIASES = {
    "datetime": ("datetime", "date", "time"),
    "instrument": ("instrument", "symbol", "code"),
    "score": ("score",),
}


def read_signal_file(path: Path, spec: BacktestSpec) -> Signal:
    """Scores from a CSV or Parquet file with datetime, instrument and score columns."""
    field = "spec.signal.file.path"
    if not path.is_file():
        raise DataError("signal file not found", where=str(path), fix=f"check {field}")
    try:
        frame = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as err:  # pandas raises many types for unreadable files
        raise DataError(
            f"cannot read the signal file ({err})", where=str(path), fix="write CSV or Parquet"
        ) from err
    lower = {c.lower(): c for c in frame.columns}
    picked = {}
    for want, aliases in _COLUMN_ALIASES.items():
        found = next((lower[a] for a in aliases if a in lower), None)
        if found is None:
            raise DataError(
                f"missing column {want!r}", where=str(path), fix="columns must be datetime, instrument, score"
            )
        picked[want] = found
    frame = frame.rename(columns={v: k for k, v in picked.items()})[list(picked)]
    try:
        frame["datetime"] = pd.to_datetime(frame["datetime"])
    except (ValueError, TypeError) as err:
        raise DataError(
            f"unparseable datetime ({err})", where=str(path), fix="write dates as YYYY-MM-DD"
        ) from err
    bad = frame["score"].isna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0]) + 2
        raise DataError(
            "empty or non-numeric score", where=f"{path}:{row}", fix="every row needs a numeric score"
        )
    if frame.duplicated(["datetime", "instrument"]).any():
        row = int(frame.duplicated(["datetime", "instrument"]).to_numpy().nonzero()[0][0]) + 2
        raise DataError(
            "duplicate (datetime, instrument)", where=f"{path}:{row}", fix="one score per instrument per day"
        )
    scores = frame.set_index(["datetime", "instrument"])["score"].astype(float).sort_index()
    return Signal(scores=scores, label=_label_for(scores, spec))


def _label_for(scores: pd.Series, spec: BacktestSpec) -> pd.Series | None:
    """qlib's default label over the scored days, so a file's signal gets an IC too."""
    from qlib.data import D

    instruments = sorted(set(scores.index.get_level_values("instrument")))
    days = scores.index.get_level_values("datetime")
    feats = D.features(instruments, [DEFAULT_LABEL], start_time=days.min(), end_time=days.max())
    if feats.empty:
        return None
    label = feats.iloc[:, 0].swaplevel().sort_index()
    label.index.names = ["datetime", "instrument"]
    return label


def score_with_artifact(loaded: Any, spec: BacktestSpec, progress: Any) -> Signal:
    """Scores of a trained model's artifact over the backtest's period and universe (signal.modelRef).

    The fitted handler of the artifact is reloaded over the new period and instruments without refitting
    its processors (qlib's load-state mode), so features are normalised exactly as in training; an
    artifact without one rebuilds the handler from its config, refitting on the training period.
    """
    from qlib.data.dataset import DatasetH
    from qlib.data.dataset.handler import DataHandlerLP

    start, end = str(spec.period.start), str(spec.period.end)
    market = spec.universe.resolved_market()
    trained = (loaded.segments or {}).get("valid") or (loaded.segments or {}).get("train")
    if trained and str(spec.period.start) <= str(trained[1]):
        progress(
            "signal",
            f"warning: the backtest starts on {start}, inside the model's training/valid data (to {trained[1]}); "
            "its results are in-sample",
        )
    progress("features", f"computing the model's features over {start} … {end}")
    if loaded.handler is not None:
        handler = loaded.handler
        handler.config(instruments=market, start_time=start, end_time=end)
        handler.setup_data(init_type=DataHandlerLP.IT_LS)
    else:
        config = dict(loaded.handler_config)
        kwargs = dict(config.get("kwargs") or {})
        fit_start = str(kwargs.get("fit_start_time") or start)
        kwargs.update(instruments=market, start_time=min(fit_start, start), end_time=end)
        handler = init_class({**config, "kwargs": kwargs}, "spec.signal.modelRef")
    dataset = DatasetH(handler=handler, segments={"test": (start, end)})
    progress("predict", "scoring the period with the trained model")
    scores = loaded.model.predict(dataset, segment="test")
    if isinstance(scores, pd.DataFrame):
        scores = scores.iloc[:, 0]
    label = dataset.prepare("test", col_set="label", data_key=DataHandlerLP.DK_R)
    return Signal(
        scores=scores.dropna(),
        label=label.iloc[:, 0] if isinstance(label, pd.DataFrame) else label,
        model=loaded.model,
    )
