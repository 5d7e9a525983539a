"""qlib's ``init`` is process-global: tests point it at one bundle at a time through ``use_bundle``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import qlib


def use_bundle(provider_uri: Path, mlruns: Path | None = None) -> None:
    """(Re-)initialise qlib for the bundle at ``provider_uri``; ``mlruns`` is where recorders may write."""
    kwargs = {}
    if mlruns is not None:
        # qlib's LGBModel logs metrics through mlflow, whose file store now needs an explicit opt-in.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        kwargs["exp_manager"] = {
            "class": "MLflowExpManager",
            "module_path": "qlib.workflow.expm",
            "kwargs": {"uri": f"file:{mlruns}", "default_exp_name": "kubequant-tests"},
        }
    # A model fitted by an earlier test may have left qlib's MLflow experiment open; close it first.
    try:
        from qlib.workflow import R

        R.end_exp(recorder_status="FINISHED")
    except Exception:
        pass
    # kernels=1: these bundles are small, and worker processes cost more than they save here.
    qlib.init(
        provider_uri=str(provider_uri),
        region="cn",
        kernels=1,
        logging_level=logging.WARNING,
        clear_mem_cache=True,
        **kwargs,
    )


def intraday_scores(bundle: Path) -> pd.Series:
    """A daily signal for the instruments with minute bars (``instruments/intraday.txt``): their 10-day
    return, over 2021-09..12, indexed (datetime, instrument); qlib pointed at ``bundle``."""
    use_bundle(bundle)
    from qlib.data import D

    from kubequant.workloads.backtest import qlib_compat

    qlib_compat.apply()  # SBBStrategyEMA's resampling on pandas 3, as the runner applies it
    codes = [
        line.split("\t")[0] for line in (bundle / "instruments" / "intraday.txt").read_text().splitlines()
    ]
    frame = D.features(
        codes, ["$close / Ref($close, 10) - 1"], start_time="2021-09-01", end_time="2021-12-31"
    )
    out = frame.iloc[:, 0].swaplevel().sort_index().dropna()
    out.index.names = ["datetime", "instrument"]
    return out
