"""Fitting one qlib model: its config, and LightGBM's boosting loop with a per-round hook for ASHA."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from kubequant.api.common import ClassReference
from kubequant.workloads.backtest.qlib_config import MODEL_MODULES, class_config

FIELD = "spec.model"
OnIteration = Callable[[int, float], None]


def model_config(spec_model: ClassReference, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """qlib's {class, module_path, kwargs} of the spec's model, with ``overrides`` (a trial's params) on top."""
    config = class_config(spec_model, MODEL_MODULES.get(spec_model.class_name), FIELD)
    config["kwargs"] = {**config["kwargs"], **(overrides or {})}
    return config


def build_model(spec_model: ClassReference, overrides: dict[str, Any] | None = None) -> Any:
    """An unfitted qlib model (a clear error naming spec.model when it cannot be built)."""
    from kubequant.errors import ConfigError
    from kubequant.workloads.backtest.signal import init_class

    config = model_config(spec_model, overrides)
    try:
        return init_class(config, FIELD)
    except (NotImplementedError, ValueError) as err:
        # qlib's models refuse some arguments this way (LGBModel: a loss other than mse or binary).
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise ConfigError(
            f"{config['class']} refused its arguments {sorted(config['kwargs'])} ({detail})",
            where=f"{FIELD}.kwargs",
            fix="check the model's arguments (LGBModel's loss is mse or binary)",
        ) from err


def is_lightgbm(model: Any) -> bool:
    """Whether the model is qlib's LGBModel (or a subclass): its boosting loop is ours to drive."""
    from qlib.contrib.model.gbdt import LGBModel

    return isinstance(model, LGBModel)


def fit_model(
    spec_model: ClassReference,
    overrides: dict[str, Any] | None,
    dataset: Any,
    *,
    on_iteration: OnIteration | None = None,
    metric: str = "valid_ic",
) -> Any:
    """Fit the spec's model on train (early-stopping on valid) and return it.

    LightGBM models are trained here with LGBModel's own data preparation and parameters, so that
    ``on_iteration(iteration, valid_metric)`` can see every boosting round (``metric``: valid_ic,
    valid_rank_ic or valid_loss); qlib's MLflow logging of each round is left out, which lets the
    fit run in a Ray worker with no qlib experiment open. Other models run their own ``fit``.
    """
    model = build_model(spec_model, overrides)
    if is_lightgbm(model):
        fit_lightgbm(model, dataset, on_iteration=on_iteration, metric=metric)
    else:
        _ensure_recorder()
        model.fit(dataset)
    return model


def _ensure_recorder() -> None:
    """qlib models log through ``qlib.workflow.R``; a Ray worker process has not initialised qlib yet."""
    from qlib.config import C

    if not C.registered:
        import qlib

        from kubequant.workloads.training.dataset import _scratch

        qlib.init(
            exp_manager={
                "class": "MLflowExpManager",
                "module_path": "qlib.workflow.expm",
                "kwargs": {"uri": f"file:{_scratch()}", "default_exp_name": "kubequant"},
            }
        )


def fit_lightgbm(
    model: Any, dataset: Any, *, on_iteration: OnIteration | None = None, metric: str = "valid_ic"
) -> Any:
    """LGBModel.fit's training (same data, params, early stopping), with an optional per-round callback."""
    import lightgbm as lgb

    parts = model._prepare_data(dataset)
    sets, names = [d for d, _ in parts], [n for _, n in parts]
    callbacks: list[Any] = [lgb.early_stopping(model.early_stopping_rounds, verbose=False)]
    if on_iteration is not None and "valid" in names:
        callbacks.append(_RoundReporter(dataset, metric, on_iteration))
    model.model = lgb.train(
        model.params,
        sets[0],
        num_boost_round=model.num_boost_round,
        valid_sets=sets,
        valid_names=names,
        callbacks=callbacks,
    )
    return model


class _RoundReporter:
    """LightGBM callback: the valid metric after each boosting round.

    The valid predictions are kept up to date by adding each new tree's raw output (one tree over the
    valid rows per round, not the whole ensemble); the loss is LightGBM's own l2 on the valid set.
    """

    order = 40  # after LightGBM's own callbacks (early stopping is 30)

    def __init__(self, dataset: Any, metric: str, report: OnIteration) -> None:
        from qlib.data.dataset.handler import DataHandlerLP

        from kubequant.workloads.training.evaluate import segment_label

        self.metric = metric
        self.report = report
        frame = dataset.prepare("valid", col_set=["feature", "label"], data_key=DataHandlerLP.DK_L)
        self.x = frame["feature"].to_numpy()
        self.index = frame.index
        self.label = segment_label(dataset, "valid").reindex(self.index)
        self.raw = np.zeros(len(self.index))

    def __call__(self, env: Any) -> None:
        from kubequant.workloads.training.evaluate import valid_score

        if self.metric == "valid_loss":
            value = next(
                (score for name, _m, score, _big in env.evaluation_result_list if name == "valid"), np.nan
            )
        else:
            self.raw += env.model.predict(
                self.x, start_iteration=env.iteration, num_iteration=1, raw_score=True
            )
            value = valid_score(pd.Series(self.raw, index=self.index), self.label, self.metric)
        self.report(env.iteration + 1, float(value))
