"""A Ray Tune search of 8 LightGBM trials, 2 at once, over every kind of distribution, with ASHA."""

from __future__ import annotations

import math
from typing import Any

import pytest
from training_ray_specs import training_spec

from kubequant.workloads.training.tuning import GRACE_ROUNDS, REDUCTION_FACTOR, run_search

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEARCH = {
    "numSamples": 8,
    "maxConcurrentTrials": 2,
    "metric": "valid_ic",
    "mode": "max",
    "searchSpace": {
        "learning_rate": {"distribution": "loguniform", "low": 0.005, "high": 0.3},
        "colsample_bytree": {"distribution": "uniform", "low": 0.4, "high": 1.0},
        "num_leaves": {"distribution": "randint", "low": 4, "high": 64},
        "lambda_l2": {"distribution": "choice", "values": [0, 1, 10]},
        "data_sample_strategy": {"distribution": "choice", "categories": ["bagging", "goss"]},
    },
}


def test_search_keeps_every_trial_and_the_best_model(dataset: Any, dataset_ref: Any, tmp_path: Any) -> None:
    spec = training_spec(tune=SEARCH)
    said: list[tuple[str, str]] = []
    out = run_search(
        spec, dataset_ref, progress=lambda stage, msg: said.append((stage, msg)), storage_path=str(tmp_path)
    )
    table = out.trials
    assert len(table) == 8
    assert set(table["status"]) <= {"TERMINATED", "ERROR"}
    # every param of every trial is recorded and lies in its range
    assert table["learning_rate"].between(0.005, 0.3).all()
    assert table["colsample_bytree"].between(0.4, 1.0).all()
    assert table["num_leaves"].between(4, 63).all()
    assert set(table["lambda_l2"]) <= {0, 1, 10}
    assert set(table["data_sample_strategy"]) <= {"bagging", "goss"}
    # the best trial is the best finished one in the table, and its params are the outcome's
    finished = table[~table["stopped_early"] & table["metric"].notna()]
    assert math.isclose(out.best_metric, finished["metric"].max())
    best = finished.loc[finished["metric"].idxmax()]
    assert out.best_params == {k: best[k] for k in SEARCH["searchSpace"]}
    # ASHA stopped at least one trial at a rung, before it could finish boosting
    stopped = table[table["stopped_early"]]
    assert len(stopped) >= 1, table[["trial_id", "iterations", "last_metric", "metric"]]
    rungs = {GRACE_ROUNDS * REDUCTION_FACTOR**k for k in range(6)}
    assert set(stopped["iterations"]) <= rungs
    assert stopped["iterations"].max() < finished["iterations"].max()
    # the kept model is the best trial's: it scores its metric again on the valid segment
    from kubequant.workloads.training.tuning import _final_score

    assert math.isclose(_final_score(out.best_model, dataset, "valid_ic"), out.best_metric, rel_tol=1e-9)
    assert out.best_model.model.params["num_leaves"] == best["num_leaves"]
    assert len([m for stage, m in said if stage == "trial"]) == 8


def test_a_trial_that_boosts_every_round_finishes_and_is_not_stopped_by_asha(
    dataset_ref: Any, tmp_path: Any
) -> None:
    """A trial that boosts all its rounds is finished, with its final metric and model.

    Before ``asha_max_t``, ASHA's ``max_t`` was ``num_boost_round``: the last round's report reached it
    and ASHA stopped the trial before its final report, so it counted as stopped early and the search
    (`kubequant run -f examples/training-tune.yaml`, 100 rounds) failed when every trial did so.
    """
    rounds = 15  # past the first rung (10): a lone trial is kept there and boosts to the end
    spec = training_spec(
        model={
            "class": "LGBModel",
            "kwargs": {"num_boost_round": rounds, "early_stopping_rounds": 1000, "seed": 1},
        },
        tune={
            "numSamples": 1,
            "maxConcurrentTrials": 1,
            "metric": "valid_ic",
            "mode": "max",
            "searchSpace": {"learning_rate": {"distribution": "uniform", "low": 0.01, "high": 0.02}},
        },
    )
    out = run_search(spec, dataset_ref, storage_path=str(tmp_path))
    (trial,) = out.trials.to_dict("records")
    assert not trial["stopped_early"], trial
    assert trial["iterations"] == rounds
    assert math.isclose(out.best_metric, trial["metric"])
    # The trial's own model came back. LightGBM keeps the rounds up to the best validation score when
    # its early-stopping callback ends training at the last round (qlib's LGBModel always passes one),
    # so the model may hold fewer trees than the rounds boosted: 14 of 15 in one CI run, with the
    # learning rate Tune drew.
    booster = out.best_model.model
    assert 1 <= booster.current_iteration() <= rounds
    assert booster.current_iteration() in (booster.best_iteration, rounds)


def test_asha_max_t_is_past_the_last_round() -> None:
    from kubequant.workloads.training.tuning import asha_max_t

    assert asha_max_t({"num_boost_round": 100}) == 101
    assert asha_max_t({}) == 1001  # LGBModel's default of 1000 rounds
    assert asha_max_t({"num_boost_round": 3}) == GRACE_ROUNDS + 1
