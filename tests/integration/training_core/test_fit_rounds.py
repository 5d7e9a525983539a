"""fit_model's per-round hook (what ASHA sees) agrees with the evaluation of the finished model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from training_manifests import training_job

from kubequant.api.training import TrainingJob
from kubequant.workloads.training.dataset import load_dataset
from kubequant.workloads.training.evaluate import evaluate_all
from kubequant.workloads.training.fit import fit_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def dataset_and_spec(training_bundle: Path) -> tuple[object, TrainingJob]:
    doc = training_job(training_bundle)
    doc["spec"]["model"]["kwargs"].update(num_boost_round=40, early_stopping_rounds=40)
    tj = TrainingJob.model_validate(doc)
    return load_dataset(tj.spec, None), tj


@pytest.mark.parametrize(("metric", "field"), [("valid_ic", "valid_ic"), ("valid_loss", "loss")])
def test_the_best_round_reported_is_the_finished_models_valid_metric(
    dataset_and_spec: tuple[object, TrainingJob], metric: str, field: str
) -> None:
    dataset, tj = dataset_and_spec
    seen: list[tuple[int, float]] = []
    model = fit_model(
        tj.spec.model, {}, dataset, on_iteration=lambda i, v: seen.append((i, v)), metric=metric
    )
    assert [i for i, _ in seen] == list(range(1, 41))  # every round, numbered from 1
    assert all(math.isfinite(v) for _, v in seen)
    # LightGBM keeps the best round's trees (early stopping on the valid l2): the value reported for that
    # round is the finished model's valid metric.
    best = model.model.best_iteration
    assert 1 <= best <= 40 and model.model.current_iteration() == best
    metrics, _extra = evaluate_all(model, dataset)
    assert seen[best - 1][1] == pytest.approx(getattr(metrics, field), rel=1e-6, abs=1e-9)


def test_overrides_reach_the_model_and_bad_kwargs_name_the_field(
    dataset_and_spec: tuple[object, TrainingJob],
) -> None:
    from kubequant.errors import ConfigError

    dataset, tj = dataset_and_spec
    model = fit_model(tj.spec.model, {"num_leaves": 4, "num_boost_round": 3}, dataset)
    assert model.params["num_leaves"] == 4 and model.model.current_iteration() <= 3
    with pytest.raises(ConfigError, match=r"LGBModel refused its arguments .*loss is mse or binary") as err:
        fit_model(tj.spec.model, {"loss": "huber"}, dataset)
    assert err.value.where == "spec.model.kwargs"
