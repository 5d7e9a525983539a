"""The reference run: LightGBM on Alpha158 and a TopkDropout backtest written straight against qlib's API.

No kubequant code runs here. The parity test and the overhead benchmark compare kubequant's path with it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd


def init(bundle: Path, mlruns: Path) -> None:
    """qlib.init for the bundle, with MLflow (used by LGBModel.fit) writing under ``mlruns``."""
    import qlib

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    qlib.init(
        provider_uri=str(bundle),
        region="cn",
        logging_level=logging.WARNING,
        expression_cache=None,
        dataset_cache=None,
        exp_manager={
            "class": "MLflowExpManager",
            "module_path": "qlib.workflow.expm",
            "kwargs": {"uri": f"file:{os.path.relpath(mlruns)}", "default_exp_name": "reference"},
        },
    )


def run(
    segments: dict[str, tuple[str, str]],
    model_kwargs: dict[str, Any],
    period: tuple[str, str],
    topk: int,
    n_drop: int,
    account: float,
    exchange_kwargs: dict[str, Any],
    benchmark: str = "SYNIDX",
) -> pd.DataFrame:
    """Train, predict the test segment, backtest; returns qlib's daily portfolio report."""
    from qlib.backtest import backtest
    from qlib.backtest.executor import SimulatorExecutor
    from qlib.contrib.data.handler import Alpha158
    from qlib.contrib.model.gbdt import LGBModel
    from qlib.contrib.strategy import TopkDropoutStrategy
    from qlib.data.dataset import DatasetH

    handler = Alpha158(
        instruments="all",
        start_time=segments["train"][0],
        end_time=segments["test"][1],
        fit_start_time=segments["train"][0],
        fit_end_time=segments["train"][1],
    )
    dataset = DatasetH(handler=handler, segments=segments)
    model = LGBModel(**model_kwargs)
    model.fit(dataset)
    pred = model.predict(dataset, segment="test")
    strategy = TopkDropoutStrategy(signal=pred, topk=topk, n_drop=n_drop)
    executor = SimulatorExecutor(time_per_step="day", generate_portfolio_metrics=True)
    portfolio, _ = backtest(
        start_time=period[0],
        end_time=period[1],
        strategy=strategy,
        executor=executor,
        benchmark=benchmark,
        account=account,
        exchange_kwargs=exchange_kwargs,
    )
    daily, _positions = next(iter(portfolio.values()))
    from qlib.workflow import R

    R.end_exp(recorder_status="FINISHED")  # close the MLflow run LGBModel.fit opened
    return daily
