"""How good a fitted model is: IC metrics computed the way qlib's SignalRecord / SigAnaRecord do (calc_ic)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from kubequant.api.training import TrainingMetrics
from kubequant.errors import DataError

METRICS = ("valid_ic", "valid_rank_ic", "valid_loss")


def _finite(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _series(frame: pd.Series | pd.DataFrame) -> pd.Series:
    return frame.iloc[:, 0] if isinstance(frame, pd.DataFrame) else frame


def daily_ic(pred: pd.Series, label: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Daily Pearson and Spearman IC of ``pred`` against ``label`` (qlib's calc_ic, on the rows both have)."""
    from qlib.contrib.eva.alpha import calc_ic

    joined = pd.concat({"pred": _series(pred), "label": _series(label)}, axis=1, join="inner").dropna()
    if joined.empty:
        return pd.Series(dtype=float), pd.Series(dtype=float)
    ic, ric = calc_ic(joined["pred"], joined["label"])
    return ic.dropna(), ric.dropna()


def _ir(series: pd.Series) -> float | None:
    if len(series) < 2:
        return None
    std = series.std()
    return _finite(series.mean() / std) if std > 0 else None


def valid_score(pred: pd.Series, label: pd.Series, metric: str) -> float:
    """The tuning metric of predictions on the valid segment: mean daily IC, mean daily rank IC, or MSE."""
    if metric not in METRICS:
        raise DataError(
            f"unknown metric {metric!r}", where="spec.tune.metric", fix=f"use one of {list(METRICS)}"
        )
    if metric == "valid_loss":
        joined = pd.concat({"pred": _series(pred), "label": _series(label)}, axis=1, join="inner").dropna()
        if joined.empty:
            return math.nan
        return float(np.mean((joined["pred"].to_numpy() - joined["label"].to_numpy()) ** 2))
    ic, ric = daily_ic(pred, label)
    chosen = ic if metric == "valid_ic" else ric
    return float(chosen.mean()) if len(chosen) else math.nan


def segment_label(dataset: Any, segment: str, learn: bool = False) -> pd.Series:
    """The label of a segment: raw (what SignalRecord scores against) or as the model learnt it (the loss)."""
    from qlib.data.dataset.handler import DataHandlerLP

    key = DataHandlerLP.DK_L if learn else DataHandlerLP.DK_R
    return _series(dataset.prepare(segment, col_set="label", data_key=key))


def evaluate(model: Any, dataset: Any) -> TrainingMetrics:
    """Test IC/ICIR/rank IC/rank ICIR, valid IC and valid loss of a fitted qlib model."""
    metrics, _extra = evaluate_all(model, dataset)
    return metrics


def evaluate_all(model: Any, dataset: Any) -> tuple[TrainingMetrics, dict[str, float | None]]:
    """The API's metrics, plus the ones metrics.json also keeps (valid rank IC, test days, rows)."""
    test_pred = _series(model.predict(dataset, segment="test"))
    ic, ric = daily_ic(test_pred, segment_label(dataset, "test"))
    valid_pred = _series(model.predict(dataset, segment="valid"))
    valid_raw = segment_label(dataset, "valid")
    metrics = TrainingMetrics(
        ic=_finite(ic.mean()) if len(ic) else None,
        icir=_ir(ic),
        rank_ic=_finite(ric.mean()) if len(ric) else None,
        rank_icir=_ir(ric),
        valid_ic=_finite(valid_score(valid_pred, valid_raw, "valid_ic")),
        loss=_finite(valid_score(valid_pred, segment_label(dataset, "valid", learn=True), "valid_loss")),
    )
    extra = {
        "valid_rank_ic": _finite(valid_score(valid_pred, valid_raw, "valid_rank_ic")),
        "test_days": float(len(ic)),
        "test_rows": float(len(test_pred)),
    }
    return metrics, extra
